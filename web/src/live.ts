// Live updates: the WatchUsers server stream as the edge serves it to browsers, Server-Sent
// Events on GET /v1/users:watch, read with EventSource (it sends `Accept: text/event-stream`
// and reconnects by itself after the stream ends or fails). Each event's data is a UserEvent
// in the gateway's JSON mapping; the stream carries no history, so the page lists again
// whenever the stream (re)opens.

import { fromJsonString } from "@bufbuild/protobuf";
import { UserEventSchema, type UserEvent } from "./gen/user_pb";

export type { UserEvent };

export type LiveState = "connecting" | "live" | "reconnecting";

export interface LiveHandlers {
  /** The stream is open: anything may have changed before it, so list again. */
  opened(): void;
  changed(event: UserEvent): void;
  state(state: LiveState): void;
}

/** Watches every user's changes; returns a function that stops watching. */
export function watchUsers(baseUrl: string, handlers: LiveHandlers): () => void {
  handlers.state("connecting");
  const source = new EventSource(`${baseUrl}/v1/users:watch`);
  source.addEventListener("open", () => {
    handlers.state("live");
    handlers.opened();
  });
  source.addEventListener("message", (message: MessageEvent<string>) => {
    try {
      handlers.changed(fromJsonString(UserEventSchema, message.data, { ignoreUnknownFields: true }));
    } catch (reason) {
      console.warn("live update not understood", reason);
    }
  });
  // The stream's own `event: error` (a google.rpc.Status, e.g. RESOURCE_EXHAUSTED when the page
  // fell behind, UNAVAILABLE when the service drains) and connection failures both arrive here;
  // EventSource then reconnects, and `open` lists again.
  source.addEventListener("error", (event: Event) => {
    if (event instanceof MessageEvent) console.warn("live updates ended:", event.data);
    handlers.state("reconnecting");
  });
  return () => source.close();
}

/** One line of the page's live log, e.g. `updated Ada Lovelace (v3)`. */
export function describeChange(event: UserEvent): string {
  const kind = event.type.replace(/^user\./, "");
  const who = event.user?.name ?? event.userId;
  return `${kind} ${who} (v${event.version})`;
}
