// REST/JSON client for the gateway's transcoded routes (proto/user.proto's
// google.api.http annotations). Create, get and update answer the user itself
// (`response_body: "user"`). Bodies are parsed with protobuf-es' proto3 JSON
// reader, so either JSON style the gateway serves reads the same: snake_case or
// lowerCamelCase names, 64-bit integers as numbers or strings.

import { fromJsonString, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import {
  DeleteUserResponseSchema,
  ListUsersResponseSchema,
  TestErrorResponseSchema,
  UserSchema,
} from "./gen/user_pb";
import type { User, UserApi, UserInput, UserPage } from "./api";
import { ApiError, restError } from "./errors";

export function restClient(baseUrl: string): UserApi {
  async function call<Desc extends DescMessage>(
    schema: Desc,
    method: string,
    path: string,
    body?: unknown,
  ): Promise<MessageShape<Desc>> {
    let response: Response;
    try {
      response = await fetch(baseUrl + path, {
        method,
        headers: body === undefined ? {} : { "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (reason) {
      // fetch rejects only when no HTTP answer is readable: offline or refused by CORS.
      throw ApiError.network(String(reason));
    }
    const text = await response.text();
    if (!response.ok) throw restError(response.status, text);
    return fromJsonString(schema, text, { ignoreUnknownFields: true });
  }

  return {
    async list(page: number, limit: number): Promise<UserPage> {
      const query = new URLSearchParams({ page: String(page), limit: String(limit) });
      const res = await call(ListUsersResponseSchema, "GET", `/v1/users?${query}`);
      return { users: res.users, total: res.total };
    },
    async create(input: UserInput): Promise<User> {
      return call(UserSchema, "POST", "/v1/users", input);
    },
    async update(id: string, input: UserInput): Promise<User> {
      const path = `/v1/users/${encodeURIComponent(id)}`;
      return call(UserSchema, "PUT", path, input);
    },
    async remove(id: string): Promise<void> {
      await call(DeleteUserResponseSchema, "DELETE", `/v1/users/${encodeURIComponent(id)}`);
    },
    async testError(httpStatus: string): Promise<string> {
      const path = `/v1/test-error/${encodeURIComponent(httpStatus)}`;
      const res = await call(TestErrorResponseSchema, "GET", path);
      return res.message;
    },
  };
}
