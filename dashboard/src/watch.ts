// The live feed: WatchAgent with a snapshot first, then every change. When
// the stream breaks it reconnects by itself and resumes after the last
// revision it saw; when that revision is too old (compacted away) or
// unknown to the server, it reloads the snapshot and says so.

import { Code, ConnectError } from "@connectrpc/connect";
import type { Agent } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { lifecycle } from "./api";
import type { Fleet } from "./fleet";

/// live: caught up and streaming. reconnecting: the stream broke, trying
/// again. stale: broken for longer than STALE_AFTER_MS; what is shown may
/// be out of date. denied: the credentials may not watch.
export type FeedState = "connecting" | "live" | "reconnecting" | "stale" | "denied";

const STALE_AFTER_MS = 5_000;
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 4_000;

export interface FeedView {
  state(state: FeedState, detail: string): void;
  notice(text: string): void;
}

export class Feed {
  revision = 0n;
  private brokenSince?: number;
  private live = false;
  /// The revision the current stream resumed after (none: from a snapshot).
  private resumedAfter?: bigint;
  private stopped = false;
  private abort?: AbortController;

  constructor(
    private readonly fleet: Fleet,
    private readonly view: FeedView,
  ) {}

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
  }

  async run(): Promise<void> {
    let delay = RETRY_MIN_MS;
    this.view.state("connecting", "");
    while (!this.stopped) {
      try {
        await this.once(() => {
          delay = RETRY_MIN_MS;
        });
        // The server ended the stream (a drain): resume at once.
      } catch (error) {
        if (this.stopped) return;
        const e = ConnectError.from(error);
        if (e.code === Code.Unauthenticated || e.code === Code.PermissionDenied) {
          this.view.state("denied", e.rawMessage);
          return;
        }
        if (e.code === Code.OutOfRange) {
          this.view.notice(
            `Could not resume after revision ${this.revision} (${e.rawMessage}); reloaded the snapshot.`,
          );
          this.revision = 0n;
          continue;
        }
      }
      this.live = false;
      this.brokenSince ??= Date.now();
      const broken = Date.now() - this.brokenSince;
      this.view.state(
        broken > STALE_AFTER_MS ? "stale" : "reconnecting",
        `since revision ${this.revision}`,
      );
      await sleep(delay);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  }

  /// One stream, from a snapshot (revision 0) or resumed after `revision`.
  private async once(onProgress: () => void): Promise<void> {
    this.abort = new AbortController();
    // A fresh stream sends the snapshot first; a resumed one only changes.
    let inSnapshot = this.revision === 0n;
    this.resumedAfter = inSnapshot ? undefined : this.revision;
    const snapshot: Agent[] = [];
    const stream = lifecycle.watchAgent(
      { startRevision: this.revision, includeHeartbeats: true },
      {
        signal: this.abort.signal,
        // A resumed stream may have nothing to send until a change or a
        // bookmark: its response headers already say it is open. (A
        // refusal comes as headers with a grpc-status, and is not that.)
        onHeader: (headers) => {
          if (!inSnapshot && !headers.has("grpc-status")) this.caughtUp(onProgress);
        },
      },
    );
    for await (const response of stream) {
      const kind = response.kind;
      switch (kind.case) {
        case "event":
          if (inSnapshot) {
            if (kind.value.agent) snapshot.push(kind.value.agent);
            break;
          }
          this.fleet.push(kind.value);
          this.revision = kind.value.revision;
          this.caughtUp(onProgress);
          break;
        case "snapshotComplete":
          inSnapshot = false;
          this.fleet.replace(snapshot);
          this.revision = kind.value.revision;
          this.caughtUp(onProgress);
          break;
        case "bookmark":
          if (kind.value.revision > this.revision) this.revision = kind.value.revision;
          this.caughtUp(onProgress);
          break;
        case "heartbeat":
          this.fleet.heartbeat(kind.value);
          break;
      }
    }
  }

  /// The stream delivered something current: the view is live again.
  private caughtUp(onProgress: () => void): void {
    if (this.brokenSince !== undefined || !this.live) {
      this.brokenSince = undefined;
      this.live = true;
      this.view.state("live", this.resumedAfter === undefined ? "" : `resumed after revision ${this.resumedAfter}`);
    }
    onProgress();
  }
}

function sleep(millis: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, millis));
}
