// Pictures of the time the page has been open: status counts sampled each
// second, and how long after its wake each live check-in came.

import type { CheckIn, Fleet } from "./fleet";
import { STATUSES, statusName } from "./format";

const SAMPLE_EVERY_MS = 1_000;
const KEEP_SAMPLES = 3_600;
const KEEP_CHECKINS = 5_000;

const COLORS: Record<string, string> = {
  PROVISIONING: "#d9a400",
  UPDATING: "#3b82c4",
  ONLINE: "#2e9d4f",
  OFFLINE: "#c0392b",
};

interface Sample {
  at: number;
  counts: number[];
}

export class Charts {
  private samples: Sample[] = [];
  private checkIns: CheckIn[] = [];

  constructor(
    fleet: Fleet,
    /// Agents per status now, in the order of STATUSES.
    private readonly totals: () => readonly number[],
    private readonly statusCanvas: HTMLCanvasElement,
    private readonly latencyCanvas: HTMLCanvasElement,
  ) {
    fleet.onCheckIn((checkIn) => {
      this.checkIns.push(checkIn);
      if (this.checkIns.length > KEEP_CHECKINS) this.checkIns.splice(0, this.checkIns.length - KEEP_CHECKINS);
    });
    setInterval(() => this.sample(), SAMPLE_EVERY_MS);
  }

  private sample(): void {
    this.samples.push({ at: Date.now(), counts: [...this.totals()] });
    if (this.samples.length > KEEP_SAMPLES) this.samples.shift();
    this.draw();
  }

  draw(): void {
    this.drawStatuses();
    this.drawLatency();
    // What each picture holds, for a reader that cannot see it.
    this.statusCanvas.dataset.samples = String(this.samples.length);
    this.latencyCanvas.dataset.checkIns = String(this.checkIns.length);
  }

  private drawStatuses(): void {
    const { ctx, width, height } = prepare(this.statusCanvas);
    const samples = this.samples;
    if (samples.length < 2) return label(ctx, "status counts: collecting…", 8, 16);
    const max = Math.max(1, ...samples.map((s) => Math.max(...s.counts)));
    const t0 = samples[0].at;
    const span = Math.max(1, samples[samples.length - 1].at - t0);
    STATUSES.forEach((status, i) => {
      ctx.strokeStyle = COLORS[statusName(status)];
      ctx.lineWidth = 2;
      ctx.beginPath();
      samples.forEach((s, j) => {
        const x = 40 + ((s.at - t0) / span) * (width - 48);
        const y = height - 18 - (s.counts[i] / max) * (height - 36);
        if (j === 0) ctx.moveTo(x, y);
        else ctx.lineTo(x, y);
      });
      ctx.stroke();
    });
    axes(ctx, width, height, String(max), `${Math.round(span / 1000)}s`);
    let x = 44;
    for (const status of STATUSES) {
      const name = statusName(status).toLowerCase();
      ctx.fillStyle = COLORS[statusName(status)];
      ctx.fillRect(x, 6, 10, 10);
      label(ctx, name, x + 14, 15);
      x += 14 + ctx.measureText(name).width + 12;
    }
  }

  private drawLatency(): void {
    const { ctx, width, height } = prepare(this.latencyCanvas);
    const points = this.checkIns;
    if (points.length === 0) return label(ctx, "check-in latency: no live check-in yet", 8, 16);
    const t0 = Math.min(points[0].at, this.samples[0]?.at ?? points[0].at);
    const span = Math.max(1, Date.now() - t0);
    const max = Math.max(1, ...points.map((p) => p.latencyMs));
    ctx.fillStyle = COLORS.ONLINE;
    for (const p of points) {
      const x = 46 + ((p.at - t0) / span) * (width - 60);
      const y = height - 22 - (p.latencyMs / max) * (height - 44);
      ctx.beginPath();
      ctx.arc(x, y, 3, 0, 2 * Math.PI);
      ctx.fill();
    }
    const sorted = points.map((p) => p.latencyMs).sort((a, b) => a - b);
    const median = sorted[Math.floor(sorted.length / 2)];
    axes(ctx, width, height, `${max}ms`, `${Math.round(span / 1000)}s`);
    label(ctx, `check-in latency after a wake: ${points.length} check-ins, median ${median}ms, max ${max}ms`, 44, 15);
  }
}

function prepare(canvas: HTMLCanvasElement) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
    canvas.width = width * ratio;
    canvas.height = height * ratio;
  }
  const ctx = canvas.getContext("2d")!;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, width, height };
}

function axes(ctx: CanvasRenderingContext2D, width: number, height: number, top: string, span: string): void {
  ctx.strokeStyle = "#999";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(40, 18);
  ctx.lineTo(40, height - 18);
  ctx.lineTo(width - 8, height - 18);
  ctx.stroke();
  label(ctx, top, 4, 24);
  label(ctx, "0", 28, height - 18);
  label(ctx, `last ${span}`, width - 70, height - 4);
}

function label(ctx: CanvasRenderingContext2D, text: string, x: number, y: number): void {
  ctx.fillStyle = "#444";
  ctx.fillText(text, x, y);
}
