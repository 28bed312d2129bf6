// The table's rows, filtered and kept in order as changes come: a change
// moves one row (a binary search and a splice) instead of re-sorting the
// fleet. A batch larger than REBUILD_ABOVE (a resume that replays minutes
// of changes) is cheaper as one filter and sort.

import type { Row, RowChange } from "./fleet";

/// A total order: ties are broken by id, so each row has one place.
export type Compare = (a: Row, b: Row) => number;

const REBUILD_ABOVE = 1_000;

export class SortedRows {
  rows: Row[] = [];

  constructor(
    private compare: Compare,
    private matches: (row: Row) => boolean,
  ) {}

  /// A new order or filter: everything is placed again.
  reset(compare: Compare, matches: (row: Row) => boolean, all: Iterable<Row>): void {
    this.compare = compare;
    this.matches = matches;
    this.rebuild(all);
  }

  rebuild(all: Iterable<Row>): void {
    const rows: Row[] = [];
    for (const row of all) if (this.matches(row)) rows.push(row);
    rows.sort(this.compare);
    this.rows = rows;
  }

  /// Applies a batch of changes in order; `all` is the fleet after them.
  apply(changes: RowChange[], all: () => Iterable<Row>): void {
    if (changes.length > REBUILD_ABOVE) return this.rebuild(all());
    for (const { before, after } of changes) {
      const was = before && this.matches(before) ? this.indexOf(before) : -1;
      const is = after !== undefined && this.matches(after);
      if (was >= 0 && is && this.compare(before!, after) === 0) {
        this.rows[was] = after;
        continue;
      }
      if (was >= 0) this.rows.splice(was, 1);
      if (is) this.rows.splice(this.lowerBound(after), 0, after);
    }
  }

  /// The first index whose row does not sort before `row`.
  private lowerBound(row: Row): number {
    let low = 0;
    let high = this.rows.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (this.compare(this.rows[mid], row) < 0) low = mid + 1;
      else high = mid;
    }
    return low;
  }

  private indexOf(row: Row): number {
    const at = this.lowerBound(row);
    if (this.rows[at] === row) return at;
    // Not where its order puts it (a comparison that is not a total
    // order): found the slow way, so the table still never shows it twice.
    return this.rows.findIndex((r) => r.agent.id === row.agent.id);
  }
}
