// Turning failures from any protocol (REST Status JSON, gRPC-web trailers,
// network failures) into one ApiError, and ApiError into the words a user sees.
// Pure functions only: unit-tested in errors.test.ts without a browser.

import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { fromBinary } from "@bufbuild/protobuf";
import { base64Decode } from "@bufbuild/protobuf/wire";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import { StatusSchema } from "./gen/google/rpc/status_pb";

/** gRPC status codes (google/rpc/code.proto). */
export const GrpcCode = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

const CODE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(GrpcCode).map(([name, code]) => [code, name]),
);

export function grpcCodeName(code: number): string {
  return CODE_NAMES[code] ?? `CODE_${code}`;
}

export interface FieldViolation {
  field: string;
  description: string;
}

/** A failed call, whatever protocol carried it. */
export class ApiError extends Error {
  constructor(
    readonly grpcCode: number,
    message: string,
    /** The HTTP status the gateway answered (REST) or its gRPC equivalent. */
    readonly httpStatus: number,
    readonly fieldViolations: FieldViolation[] = [],
    /** True when no HTTP answer arrived at all (offline, refused by CORS). */
    readonly network = false,
  ) {
    super(message);
    this.name = "ApiError";
  }

  static network(detail: string): ApiError {
    return new ApiError(GrpcCode.UNAVAILABLE, detail, 0, [], true);
  }
}

/** The gateway's status mapping (google/rpc/code.proto), used for gRPC-web answers. */
export function httpStatusForGrpcCode(code: number): number {
  switch (code) {
    case GrpcCode.OK:
      return 200;
    case GrpcCode.CANCELLED:
      return 499;
    case GrpcCode.INVALID_ARGUMENT:
    case GrpcCode.FAILED_PRECONDITION:
    case GrpcCode.OUT_OF_RANGE:
      return 400;
    case GrpcCode.DEADLINE_EXCEEDED:
      return 504;
    case GrpcCode.NOT_FOUND:
      return 404;
    case GrpcCode.ALREADY_EXISTS:
    case GrpcCode.ABORTED:
      return 409;
    case GrpcCode.PERMISSION_DENIED:
      return 403;
    case GrpcCode.RESOURCE_EXHAUSTED:
      return 429;
    case GrpcCode.UNIMPLEMENTED:
      return 501;
    case GrpcCode.UNAVAILABLE:
      return 503;
    case GrpcCode.UNAUTHENTICATED:
      return 401;
    default:
      return 500;
  }
}

/** For REST answers whose body is not a google.rpc.Status (e.g. a proxy's own 429). */
export function grpcCodeForHttpStatus(status: number): number {
  switch (status) {
    case 400:
    case 422:
      return GrpcCode.INVALID_ARGUMENT;
    case 401:
      return GrpcCode.UNAUTHENTICATED;
    case 403:
      return GrpcCode.PERMISSION_DENIED;
    case 404:
      return GrpcCode.NOT_FOUND;
    case 409:
      return GrpcCode.ALREADY_EXISTS;
    case 429:
      return GrpcCode.RESOURCE_EXHAUSTED;
    case 499:
      return GrpcCode.CANCELLED;
    case 501:
      return GrpcCode.UNIMPLEMENTED;
    case 502:
    case 503:
      return GrpcCode.UNAVAILABLE;
    case 504:
      return GrpcCode.DEADLINE_EXCEEDED;
    default:
      return status >= 500 ? GrpcCode.INTERNAL : GrpcCode.UNKNOWN;
  }
}

const BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest";

type JsonObject = Record<string, unknown>;

function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** Field violations from the `details` of a google.rpc.Status in proto3 JSON. */
export function violationsFromJsonDetails(details: unknown): FieldViolation[] {
  if (!Array.isArray(details)) return [];
  const violations: FieldViolation[] = [];
  for (const detail of details) {
    if (!isObject(detail) || detail["@type"] !== BAD_REQUEST_TYPE) continue;
    // proto3 JSON printers use the json_name; accept the proto name too.
    const list = detail.fieldViolations ?? detail.field_violations;
    if (!Array.isArray(list)) continue;
    for (const item of list) {
      if (!isObject(item)) continue;
      violations.push({
        field: typeof item.field === "string" ? item.field : "",
        description: typeof item.description === "string" ? item.description : "",
      });
    }
  }
  return violations;
}

/**
 * An error from a non-2xx REST answer: a google.rpc.Status body when the gateway wrote one.
 * With the facade's JSON style the same object also carries `detail` (and validation failures
 * are HTTP 422); `code`, `message` and `details` read the same.
 */
export function restError(httpStatus: number, body: string): ApiError {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    parsed = undefined;
  }
  if (isObject(parsed) && typeof parsed.code === "number") {
    const message = typeof parsed.message === "string" ? parsed.message : "";
    return new ApiError(parsed.code, message, httpStatus, violationsFromJsonDetails(parsed.details));
  }
  const text = body.trim().slice(0, 200);
  return new ApiError(grpcCodeForHttpStatus(httpStatus), text || `HTTP ${httpStatus}`, httpStatus);
}

/** Field violations from a binary google.rpc.Status (the `grpc-status-details-bin` trailer). */
export function violationsFromStatusBytes(bytes: Uint8Array): FieldViolation[] {
  let status;
  try {
    status = fromBinary(StatusSchema, bytes);
  } catch {
    return [];
  }
  const violations: FieldViolation[] = [];
  for (const detail of status.details) {
    const badRequest = anyUnpack(detail, BadRequestSchema);
    if (!badRequest) continue;
    for (const violation of badRequest.fieldViolations) {
      violations.push({ field: violation.field, description: violation.description });
    }
  }
  return violations;
}

/** Same, from the base64 text of the trailer (padding optional, as gRPC allows). */
export function violationsFromStatusDetailsHeader(value: string | undefined): FieldViolation[] {
  if (!value) return [];
  try {
    return violationsFromStatusBytes(base64Decode(value.trim()));
  } catch {
    return [];
  }
}

/** What the page shows for a failed call. */
export interface UserFacingError {
  /** One sentence for the error banner. */
  summary: string;
  /** e.g. "HTTP 409 · ALREADY_EXISTS"; empty for network failures. */
  codes: string;
  /** Per-field messages keyed by field name (for the form). */
  fields: FieldViolation[];
}

export function describeError(error: ApiError): UserFacingError {
  const codes = error.network ? "" : `HTTP ${error.httpStatus} · ${grpcCodeName(error.grpcCode)}`;
  const detail = error.message ? ` (${error.message})` : "";
  const fields = error.fieldViolations;
  let summary: string;
  if (error.network) {
    summary = `Could not reach the API: the request was blocked (CORS) or the gateway is offline.${detail}`;
  } else {
    switch (error.grpcCode) {
      case GrpcCode.ALREADY_EXISTS:
        summary = `A user with this email already exists. Use another email address.${detail}`;
        break;
      case GrpcCode.INVALID_ARGUMENT:
      case GrpcCode.OUT_OF_RANGE:
      case GrpcCode.FAILED_PRECONDITION:
        summary =
          fields.length > 0
            ? `Please correct the highlighted fields: ${fields.map((f) => `${f.field}: ${f.description}`).join("; ")}.`
            : `The request was rejected as invalid.${detail}`;
        break;
      case GrpcCode.RESOURCE_EXHAUSTED:
        summary = "Too many requests: you are being rate limited. Wait a moment and try again.";
        break;
      case GrpcCode.UNAVAILABLE:
        summary = "The user service is unavailable right now. Please try again shortly.";
        break;
      case GrpcCode.DEADLINE_EXCEEDED:
        summary = "The user service took too long to answer. Please try again.";
        break;
      case GrpcCode.NOT_FOUND:
        summary = `That user was not found; it may have been deleted.${detail}`;
        break;
      case GrpcCode.UNAUTHENTICATED:
      case GrpcCode.PERMISSION_DENIED:
        summary = `You are not allowed to do this.${detail}`;
        break;
      default:
        summary = `Something went wrong on the server.${detail}`;
    }
  }
  return { summary, codes, fields };
}
