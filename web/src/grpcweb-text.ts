// gRPC-web, text mode (application/grpc-web-text: base64 frames both ways),
// with the grpc-web runtime from npm. grpc-web normally pairs with
// protoc-gen-grpc-web stubs (a native plugin, not on npm); its
// MethodDescriptor takes any (de)serializer, so the protobuf-es messages
// generated for the other clients are reused here.

import { create, fromBinary, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { DescMethodUnary } from "@bufbuild/protobuf";
import { GrpcWebClientBase, MethodDescriptor, MethodType, RpcError } from "grpc-web";
import { UserService } from "./gen/user_pb";
import type { User, UserApi, UserInput, UserPage } from "./api";
import { ApiError, GrpcCode, httpStatusForGrpcCode, violationsFromStatusDetailsHeader } from "./errors";

type Unary<I extends DescMessage, O extends DescMessage> = DescMethodUnary<I, O>;

function toApiError(reason: unknown): ApiError {
  if (reason instanceof RpcError) {
    // grpc-web reports a request that got no HTTP answer (CORS refusal,
    // connection refused) as UNKNOWN with "http status code: 0" in the message.
    if (/http status code: 0\b/.test(reason.message)) {
      return ApiError.network(reason.message);
    }
    const violations = violationsFromStatusDetailsHeader(reason.metadata?.["grpc-status-details-bin"]);
    return new ApiError(reason.code, reason.message, httpStatusForGrpcCode(reason.code), violations);
  }
  return new ApiError(GrpcCode.UNKNOWN, String(reason), 500);
}

export function grpcWebTextClient(baseUrl: string): UserApi {
  const client = new GrpcWebClientBase({ format: "text" });

  async function unary<I extends DescMessage, O extends DescMessage>(
    method: Unary<I, O>,
    init: MessageInitShape<I>,
  ): Promise<MessageShape<O>> {
    const path = `/${method.parent.typeName}/${method.name}`;
    // grpc-web only hands the type constructors back to the serializers below.
    const anyType = Object as unknown as new (...args: unknown[]) => never;
    const descriptor = new MethodDescriptor<MessageShape<I>, MessageShape<O>>(
      path,
      MethodType.UNARY,
      anyType,
      anyType,
      (request: MessageShape<I>) => toBinary(method.input, request),
      (bytes: Uint8Array) => fromBinary(method.output, bytes),
    );
    try {
      // unaryCall, not thenableCall: the latter is typed in index.d.ts but not exported by 2.1.1.
      return await client.unaryCall(baseUrl + path, create(method.input, init), {}, descriptor);
    } catch (reason) {
      throw toApiError(reason);
    }
  }

  function requireUser(user: User | undefined): User {
    if (!user) throw new ApiError(GrpcCode.INTERNAL, "the answer carried no user", 500);
    return user;
  }

  const methods = UserService.method;
  return {
    async list(page: number, limit: number): Promise<UserPage> {
      const res = await unary(methods.listUsers, { page, limit });
      return { users: res.users, total: res.total };
    },
    async create(input: UserInput): Promise<User> {
      return requireUser((await unary(methods.createUser, input)).user);
    },
    async update(id: string, input: UserInput): Promise<User> {
      return requireUser((await unary(methods.updateUser, { id, ...input })).user);
    },
    async remove(id: string): Promise<void> {
      await unary(methods.deleteUser, { id });
    },
    async testError(httpStatus: string): Promise<string> {
      return (await unary(methods.testError, { statusCode: httpStatus })).message;
    },
  };
}
