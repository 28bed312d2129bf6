# CPU ticks (user + system, /proc) for the benchmark scripts; sourced, not run.
# `database_ticks` needs the sourcing script's `psql_` (its own host and port).

# Ticks of one process so far (0 once it is gone).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Ticks of every session of database $1 (a session that ended is not counted).
database_ticks() {
  local total=0 p
  for p in $(psql_ -d postgres -c "SELECT pid FROM pg_stat_activity WHERE datname = '$1'"); do
    total=$((total + $(ticks "$p")))
  done
  echo "$total"
}
