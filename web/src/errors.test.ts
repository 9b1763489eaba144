import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import { base64Encode } from "@bufbuild/protobuf/wire";
import { describe, expect, it } from "vitest";
import { apiBaseUrl } from "./api";
import {
  ApiError,
  describeError,
  GrpcCode,
  grpcCodeForHttpStatus,
  httpStatusForGrpcCode,
  restError,
  violationsFromStatusDetailsHeader,
} from "./errors";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import { StatusSchema } from "./gen/google/rpc/status_pb";

describe("restError", () => {
  it("reads a google.rpc.Status body with BadRequest field violations", () => {
    const body = JSON.stringify({
      code: 3,
      message: "invalid user",
      details: [
        {
          "@type": "type.googleapis.com/google.rpc.BadRequest",
          fieldViolations: [
            { field: "email", description: "must be a valid email address" },
            { field: "age", description: "must be between 0 and 150" },
          ],
        },
      ],
    });
    const error = restError(400, body);
    expect(error.grpcCode).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(error.httpStatus).toBe(400);
    expect(error.message).toBe("invalid user");
    expect(error.fieldViolations).toEqual([
      { field: "email", description: "must be a valid email address" },
      { field: "age", description: "must be between 0 and 150" },
    ]);
  });

  it("accepts proto field names and skips other detail types", () => {
    const body = JSON.stringify({
      code: 3,
      message: "bad",
      details: [
        { "@type": "type.googleapis.com/google.rpc.ErrorInfo", reason: "X" },
        {
          "@type": "type.googleapis.com/google.rpc.BadRequest",
          field_violations: [{ field: "name", description: "required" }],
        },
      ],
    });
    expect(restError(400, body).fieldViolations).toEqual([{ field: "name", description: "required" }]);
  });

  it("reads the facade style: a 422 Status with a FastAPI detail list beside it", () => {
    const body = JSON.stringify({
      code: 3,
      message: "invalid value for field age: value must be less than or equal to 150",
      details: [
        {
          "@type": "type.googleapis.com/google.rpc.BadRequest",
          fieldViolations: [{ field: "age", description: "value must be less than or equal to 150" }],
        },
      ],
      detail: [{ loc: ["body", "age"], msg: "Input should be less than or equal to 150", type: "less_than_equal" }],
    });
    const error = restError(422, body);
    expect(error.grpcCode).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(error.httpStatus).toBe(422);
    expect(error.fieldViolations).toEqual([{ field: "age", description: "value must be less than or equal to 150" }]);
    expect(restError(422, "nope").grpcCode).toBe(GrpcCode.INVALID_ARGUMENT);
  });

  it("falls back on the HTTP status when the body is not a Status", () => {
    const error = restError(429, "slow down");
    expect(error.grpcCode).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    expect(error.message).toBe("slow down");
    expect(restError(502, "").grpcCode).toBe(GrpcCode.UNAVAILABLE);
    expect(restError(502, "").message).toBe("HTTP 502");
  });
});

describe("grpc-status-details-bin", () => {
  const status = create(StatusSchema, {
    code: 3,
    message: "invalid",
    details: [
      anyPack(
        BadRequestSchema,
        create(BadRequestSchema, { fieldViolations: [{ field: "user.email", description: "taken format" }] }),
      ),
    ],
  });
  const encoded = base64Encode(toBinary(StatusSchema, status));

  it("decodes padded and unpadded base64", () => {
    const expected = [{ field: "user.email", description: "taken format" }];
    expect(violationsFromStatusDetailsHeader(encoded)).toEqual(expected);
    expect(violationsFromStatusDetailsHeader(encoded.replace(/=+$/, ""))).toEqual(expected);
  });

  it("ignores garbage instead of throwing", () => {
    expect(violationsFromStatusDetailsHeader("%%%not base64")).toEqual([]);
    expect(violationsFromStatusDetailsHeader(base64Encode(new Uint8Array([0xff, 0xff, 0xff])))).toEqual([]);
    expect(violationsFromStatusDetailsHeader(undefined)).toEqual([]);
  });
});

describe("status mapping", () => {
  it("follows google/rpc/code.proto's HTTP mapping", () => {
    const expected: [number, number][] = [
      [0, 200], [1, 499], [3, 400], [4, 504], [5, 404], [6, 409], [7, 403],
      [8, 429], [9, 400], [10, 409], [11, 400], [12, 501], [13, 500], [14, 503], [16, 401], [2, 500],
    ];
    for (const [code, http] of expected) expect(httpStatusForGrpcCode(code), `code ${code}`).toBe(http);
  });

  it("round-trips the statuses the page explains", () => {
    for (const http of [400, 404, 409, 429, 503, 504]) {
      expect(httpStatusForGrpcCode(grpcCodeForHttpStatus(http))).toBe(http);
    }
  });
});

describe("describeError", () => {
  it("explains a duplicate email", () => {
    const shown = describeError(new ApiError(GrpcCode.ALREADY_EXISTS, "email exists", 409));
    expect(shown.summary).toMatch(/already exists/);
    expect(shown.codes).toBe("HTTP 409 · ALREADY_EXISTS");
  });

  it("lists field messages for a validation error", () => {
    const shown = describeError(
      new ApiError(GrpcCode.INVALID_ARGUMENT, "invalid", 400, [{ field: "email", description: "is invalid" }]),
    );
    expect(shown.summary).toContain("email: is invalid");
    expect(shown.fields).toHaveLength(1);
  });

  it("explains rate limiting, an unavailable service and a network failure", () => {
    expect(describeError(new ApiError(GrpcCode.RESOURCE_EXHAUSTED, "", 429)).summary).toMatch(/rate limited/);
    expect(describeError(new ApiError(GrpcCode.UNAVAILABLE, "", 503)).summary).toMatch(/unavailable/);
    const network = describeError(ApiError.network("Failed to fetch"));
    expect(network.summary).toMatch(/CORS/);
    expect(network.codes).toBe("");
  });
});

describe("apiBaseUrl", () => {
  it("uses the page origin unless ?api= points elsewhere", () => {
    expect(apiBaseUrl("http://127.0.0.1:8080/index.html")).toBe("http://127.0.0.1:8080");
    expect(apiBaseUrl("http://127.0.0.1:9000/?api=http://127.0.0.1:8080/ignored")).toBe("http://127.0.0.1:8080");
  });
});
