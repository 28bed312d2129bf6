// The live feed: WatchAgent with a snapshot first, then every change. When
// the stream breaks it reconnects by itself and resumes after the last
// revision it saw; when that revision is too old (compacted away) or
// unknown to the server, it reloads the snapshot and says so.
//
// A stream can also die without breaking: a proxy or a NAT may hold a
// connection the server dropped long ago. The page asks for a bookmark
// after every BOOKMARK_EVERY of quiet, so a live stream is never silent
// for long: silent for STALE_AFTER, the view is called stale; silent for
// GIVE_UP_AFTER, the stream is abandoned and the feed reconnects.

import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import type { Agent } from "./gen/missioncontrol/lifecycle/v1/lifecycle_pb";
import { lifecycle } from "./api";
import type { Fleet } from "./fleet";

/// live: caught up and streaming. reconnecting: the stream broke, trying
/// again. stale: broken, or silent, for longer than STALE_AFTER_MS; what is
/// shown may be out of date. denied: the credentials may not watch.
export type FeedState = "connecting" | "live" | "reconnecting" | "stale" | "denied";

const BOOKMARK_EVERY_S = 2n;
const STALE_AFTER_MS = 5_000;
const GIVE_UP_AFTER_MS = 15_000;
const CHECK_SILENCE_EVERY_MS = 1_000;
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
  /// When the current stream last delivered anything (or was opened).
  private heard = 0;
  /// Live, but silent for longer than STALE_AFTER_MS.
  private silent = false;
  private silenceCheck?: number;

  constructor(
    private readonly fleet: Fleet,
    private readonly view: FeedView,
  ) {}

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
    clearInterval(this.silenceCheck);
  }

  async run(): Promise<void> {
    let delay = RETRY_MIN_MS;
    this.view.state("connecting", "");
    this.silenceCheck = window.setInterval(() => this.checkSilence(), CHECK_SILENCE_EVERY_MS);
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
          clearInterval(this.silenceCheck);
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
      this.abort = undefined;
      this.live = false;
      this.silent = false;
      // A stream given up for silence has been dead since it last spoke.
      this.brokenSince ??= Math.min(this.heard, Date.now());
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
    this.heard = Date.now();
    // A fresh stream sends the snapshot first; a resumed one only changes.
    let inSnapshot = this.revision === 0n;
    this.resumedAfter = inSnapshot ? undefined : this.revision;
    const snapshot: Agent[] = [];
    const stream = lifecycle.watchAgent(
      {
        startRevision: this.revision,
        includeHeartbeats: true,
        bookmarkInterval: create(DurationSchema, { seconds: BOOKMARK_EVERY_S }),
      },
      {
        signal: this.abort.signal,
        // A resumed stream may have nothing to send until a change or a
        // bookmark: its response headers already say it is open. (A
        // refusal comes as headers with a grpc-status, and is not that.)
        onHeader: (headers) => {
          this.hear();
          if (!inSnapshot && !headers.has("grpc-status")) this.caughtUp(onProgress);
        },
      },
    );
    for await (const response of stream) {
      this.hear();
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

  /// The stream spoke: it is alive.
  private hear(): void {
    this.heard = Date.now();
    if (this.silent) {
      this.silent = false;
      this.view.state("live", this.liveDetail());
    }
  }

  /// Calls a quiet live stream stale, and gives up on one quiet for too
  /// long (the loop in run() then reconnects and resumes).
  private checkSilence(): void {
    if (!this.abort) return;
    const quiet = Date.now() - this.heard;
    if (quiet > GIVE_UP_AFTER_MS) {
      this.abort.abort();
      this.abort = undefined;
    } else if (this.live && quiet > STALE_AFTER_MS) {
      this.silent = true;
      this.view.state("stale", `since revision ${this.revision}, nothing heard for ${Math.floor(quiet / 1000)}s`);
    }
  }

  /// The stream delivered something current: the view is live again.
  private caughtUp(onProgress: () => void): void {
    if (this.brokenSince !== undefined || !this.live) {
      this.brokenSince = undefined;
      this.live = true;
      this.view.state("live", this.liveDetail());
    }
    onProgress();
  }

  private liveDetail(): string {
    return this.resumedAfter === undefined ? "" : `resumed after revision ${this.resumedAfter}`;
  }
}

function sleep(millis: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, millis));
}
