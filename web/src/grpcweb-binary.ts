// gRPC-web, binary mode (application/grpc-web+proto), with Connect's gRPC-web
// transport. Connect does not implement the base64 text mode: see grpcweb-text.ts.

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { UserService } from "./gen/user_pb";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb";
import type { User, UserApi, UserInput, UserPage } from "./api";
import { ApiError, httpStatusForGrpcCode, type FieldViolation } from "./errors";

function toApiError(reason: unknown): ApiError {
  const error = ConnectError.from(reason);
  // A fetch that never got an answer (offline, refused by CORS) rejects with a TypeError.
  if (error.cause instanceof TypeError) return ApiError.network(error.cause.message);
  const violations: FieldViolation[] = error
    .findDetails(BadRequestSchema)
    .flatMap((badRequest) =>
      badRequest.fieldViolations.map((v) => ({ field: v.field, description: v.description })),
    );
  const code = error.code as number;
  return new ApiError(code, error.rawMessage, httpStatusForGrpcCode(code), violations);
}

async function guarded<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (reason) {
    throw toApiError(reason);
  }
}

function requireUser(user: User | undefined): User {
  if (!user) throw new ApiError(Code.Internal, "the answer carried no user", 500);
  return user;
}

export function grpcWebBinaryClient(baseUrl: string): UserApi {
  const transport = createGrpcWebTransport({ baseUrl, useBinaryFormat: true });
  const client = createClient(UserService, transport);
  return {
    list: (page: number, limit: number): Promise<UserPage> =>
      guarded(async () => {
        const res = await client.listUsers({ page, limit });
        return { users: res.users, total: res.total };
      }),
    create: (input: UserInput): Promise<User> =>
      guarded(async () => requireUser((await client.createUser(input)).user)),
    update: (id: string, input: UserInput): Promise<User> =>
      guarded(async () => requireUser((await client.updateUser({ id, ...input })).user)),
    remove: (id: string): Promise<void> =>
      guarded(async () => {
        await client.deleteUser({ id });
      }),
    testError: (httpStatus: string): Promise<string> =>
      guarded(async () => (await client.testError({ statusCode: httpStatus })).message),
  };
}
