// Live updates: the WatchUsers server stream as the edge serves it to browsers, Server-Sent
// Events on GET /v1/users:watch, read with EventSource (it sends `Accept: text/event-stream`
// and reconnects by itself after the stream ends or the connection drops). Each event's data is
// a UserEvent in the gateway's JSON mapping; the stream carries no history, so the page lists
// again whenever the stream (re)opens.

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

/** The first wait before opening a new EventSource after one gave up; doubled up to the max. */
export const RETRY_FIRST_MS = 1_000;
export const RETRY_MAX_MS = 30_000;

/** The wait before the attempt after `failures` consecutive failed ones. */
export function retryDelay(failures: number): number {
  return Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** Math.max(0, failures - 1));
}

/** Watches every user's changes; returns a function that stops watching. */
export function watchUsers(baseUrl: string, handlers: LiveHandlers): () => void {
  let source: EventSource | undefined;
  let retry: ReturnType<typeof setTimeout> | undefined;
  let failures = 0;
  let stopped = false;

  const connect = () => {
    handlers.state(failures === 0 ? "connecting" : "reconnecting");
    const current = new EventSource(`${baseUrl}/v1/users:watch`);
    source = current;
    current.addEventListener("open", () => {
      failures = 0;
      handlers.state("live");
      handlers.opened();
    });
    current.addEventListener("message", (message: MessageEvent<string>) => {
      try {
        handlers.changed(fromJsonString(UserEventSchema, message.data, { ignoreUnknownFields: true }));
      } catch (reason) {
        console.warn("live update not understood", reason);
      }
    });
    // The stream's own `event: error` (a google.rpc.Status, e.g. RESOURCE_EXHAUSTED when the
    // page fell behind, UNAVAILABLE when the service drains) and connection failures both
    // arrive here. EventSource reconnects by itself after a dropped stream, but gives up for
    // good on an answer that is not an event stream (the gateway's 503 while the service is
    // down; a CORS refusal): then a new one is opened here, with a growing wait.
    current.addEventListener("error", (event: Event) => {
      if (event instanceof MessageEvent) console.warn("live updates ended:", event.data);
      if (stopped || source !== current) return;
      handlers.state("reconnecting");
      if (current.readyState === EventSource.CLOSED) {
        failures += 1;
        retry = setTimeout(connect, retryDelay(failures));
      }
    });
  };

  connect();
  return () => {
    stopped = true;
    clearTimeout(retry);
    source?.close();
  };
}

/** One line of the page's live log, e.g. `updated Ada Lovelace (v3)`. */
export function describeChange(event: UserEvent): string {
  const kind = event.type.replace(/^user\./, "");
  const who = event.user?.name ?? event.userId;
  return `${kind} ${who} (v${event.version})`;
}
