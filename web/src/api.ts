// One interface for the user API, implemented once per protocol
// (rest.ts, grpcweb-binary.ts, grpcweb-text.ts). Every implementation speaks
// the generated protobuf-es messages, so the page code is protocol-agnostic.
// Implementations throw ApiError (errors.ts) for every failure.

import type { User } from "./gen/user_pb";

export type { User };

export interface UserInput {
  name: string;
  email: string;
  age: number;
}

export interface UserPage {
  users: User[];
  total: number;
}

export interface UserApi {
  list(page: number, limit: number): Promise<UserPage>;
  create(input: UserInput): Promise<User>;
  update(id: string, input: UserInput): Promise<User>;
  remove(id: string): Promise<void>;
  /** Asks the service for the gRPC status matching an HTTP status (TestError RPC). */
  testError(httpStatus: string): Promise<string>;
}

export type Protocol = "rest" | "grpc-web" | "grpc-web-text";

export const PROTOCOLS: { value: Protocol; label: string }[] = [
  { value: "rest", label: "REST / JSON (fetch)" },
  { value: "grpc-web", label: "gRPC-web binary (@connectrpc/connect-web)" },
  { value: "grpc-web-text", label: "gRPC-web text (grpc-web)" },
];

export function isProtocol(value: string): value is Protocol {
  return PROTOCOLS.some((p) => p.value === value);
}

/**
 * The API origin: the page's own by default; `?api=http://host:port` points a
 * page served elsewhere at the gateway (the cross-origin, CORS case).
 */
export function apiBaseUrl(pageUrl: string): string {
  const url = new URL(pageUrl);
  const override = url.searchParams.get("api");
  if (override) {
    const api = new URL(override);
    return api.origin;
  }
  return url.origin;
}
