import { create, fromJsonString } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { UserEventSchema, UserSchema } from "./gen/user_pb";
import { describeChange, RETRY_FIRST_MS, RETRY_MAX_MS, retryDelay } from "./live";

describe("live changes", () => {
  it("reads an event in either JSON style the gateway serves", () => {
    for (const data of [
      '{"eventId":"e1","userId":"u1","type":"user.updated","version":"3","user":{"id":"u1","name":"Ada"}}',
      '{"event_id":"e1","user_id":"u1","type":"user.updated","version":3,"user":{"id":"u1","name":"Ada"}}',
    ]) {
      const event = fromJsonString(UserEventSchema, data, { ignoreUnknownFields: true });
      expect(describeChange(event)).toBe("updated Ada (v3)");
    }
  });

  it("names a deleted user by id (a delete carries no snapshot)", () => {
    const event = create(UserEventSchema, { userId: "u7", type: "user.deleted", version: 4n });
    expect(describeChange(event)).toBe("deleted u7 (v4)");
    const created = create(UserEventSchema, {
      userId: "u8",
      type: "user.created",
      version: 1n,
      user: create(UserSchema, { name: "Grace" }),
    });
    expect(describeChange(created)).toBe("created Grace (v1)");
  });

  it("waits longer after each failed reconnect, up to a bound", () => {
    expect(retryDelay(1)).toBe(RETRY_FIRST_MS);
    expect(retryDelay(2)).toBe(2 * RETRY_FIRST_MS);
    expect(retryDelay(3)).toBe(4 * RETRY_FIRST_MS);
    expect(retryDelay(50)).toBe(RETRY_MAX_MS);
  });
});
