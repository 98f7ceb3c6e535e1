/*
 * What one audit row costs inside SQLite, index by index (README: "What the audit row costs in
 * SQLite"). Creates the audit schema from fastgate-store/migrations/sqlite/0001_init.sql in a WAL
 * database under /tmp, then inserts BATCHES transactions of 512 rows through a prepared 64-row
 * INSERT with every string bound in place (SQLITE_STATIC), as the gateway's SQLite writer does.
 *
 *   gcc -O2 -o /tmp/sqlite_row benches/sqlite_row.c -lsqlite3      # Debian: libsqlite3-dev
 *   for v in base noreq nokey noreq_nokey; do
 *     valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$v /tmp/sqlite_row $v 60 2>&1 | grep refs
 *   done
 *
 * Variants: base (the schema as migrated), noreq (without the request_id index), nokey (without
 * the (key_id, started_at) index), noreq_nokey (neither). Divide the instruction counts by
 * BATCHES * 512 and compare variants with each other; the program's own row generation
 * (snprintf) is the same in all of them. Prints the process CPU time per row, which on a shared
 * VM is only indicative. Run from the repository root.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ROWS_PER_INSERT 64
#define ROWS_PER_TX 512

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc(n + 1);
    if (fread(buf, 1, n, f) != (size_t)n) { perror(path); exit(1); }
    buf[n] = 0;
    fclose(f);
    return buf;
}

static double cpu_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void must(int rc, sqlite3 *db, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE) {
        fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s VARIANT BATCHES\n", argv[0]); return 2; }
    const char *variant = argv[1];
    int batches = atoi(argv[2]);
    char path[256], side[300];
    snprintf(path, sizeof path, "/tmp/sqlite_row_%s.db", variant);
    unlink(path);
    snprintf(side, sizeof side, "%s-wal", path); unlink(side);
    snprintf(side, sizeof side, "%s-shm", path); unlink(side);

    sqlite3 *db;
    must(sqlite3_open(path, &db), db, "open");
    must(sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", 0, 0, 0), db, "pragma");
    char *schema = slurp("fastgate-store/migrations/sqlite/0001_init.sql");
    must(sqlite3_exec(db, schema, 0, 0, 0), db, "schema");
    if (strstr(variant, "noreq")) must(sqlite3_exec(db, "DROP INDEX audit_events_request_id", 0, 0, 0), db, "drop");
    if (strstr(variant, "nokey")) must(sqlite3_exec(db, "DROP INDEX audit_events_key_started", 0, 0, 0), db, "drop");

    static char sql[65536];
    int o = snprintf(sql, sizeof sql,
        "INSERT INTO audit_events (request_id, started_at, key_id, source_path, client_ip, user_agent, "
        "method, path, target_url, status, is_stream, model, request_bytes, response_bytes, ttfb_us, "
        "duration_us, outcome, error_code, prompt_tokens, completion_tokens, total_tokens) VALUES ");
    for (int r = 0; r < ROWS_PER_INSERT; r++) {
        o += snprintf(sql + o, sizeof sql - o, "%s(", r ? "," : "");
        for (int c = 0; c < 21; c++) o += snprintf(sql + o, sizeof sql - o, "%s?", c ? "," : "");
        o += snprintf(sql + o, sizeof sql - o, ")");
    }
    sqlite3_stmt *st;
    must(sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, 0), db, "prepare");

    /* UUID v7-like request ids (time-ordered, random within a millisecond), 4 keys, ~15 k req/s. */
    long long t0 = 1790000000000LL;
    long i = 0;
    char rid[ROWS_PER_INSERT][40], key[ROWS_PER_INSERT][16], src[ROWS_PER_INSERT][16];
    double total = 0;
    srand(1);
    for (int b = 0; b < batches; b++) {
        double c0 = cpu_us();
        must(sqlite3_exec(db, "BEGIN IMMEDIATE", 0, 0, 0), db, "begin");
        for (int chunk = 0; chunk < ROWS_PER_TX / ROWS_PER_INSERT; chunk++) {
            int at = 1;
            for (int r = 0; r < ROWS_PER_INSERT; r++) {
                i++;
                long long ms = t0 + i * 67 / 1000;
                snprintf(rid[r], sizeof rid[r], "%08llx-%04llx-7%03x-%04x-%08x%04x", ms >> 16, ms & 0xffff,
                         rand() & 0xfff, rand() & 0xffff, rand(), rand() & 0xffff);
                snprintf(key[r], sizeof key[r], "k_bench%02ld", i % 4);
                snprintf(src[r], sizeof src[r], "user%ld", i % 4);
                sqlite3_bind_text(st, at++, rid[r], -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, at++, ms);
                sqlite3_bind_text(st, at++, key[r], -1, SQLITE_STATIC);
                sqlite3_bind_text(st, at++, src[r], -1, SQLITE_STATIC);
                sqlite3_bind_text(st, at++, "127.0.0.1", -1, SQLITE_STATIC);
                sqlite3_bind_text(st, at++, "python-httpx/0.27.0", -1, SQLITE_STATIC);
                sqlite3_bind_text(st, at++, "POST", -1, SQLITE_STATIC);
                sqlite3_bind_text(st, at++, "/proxy/miniai/v2/chat/completions", -1, SQLITE_STATIC);
                sqlite3_bind_text(st, at++, "http://127.0.0.1:1030/miniai/v2/chat/completions", -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, at++, 200);
                sqlite3_bind_int64(st, at++, i % 5 < 2);
                sqlite3_bind_text(st, at++, "gpt-4o", -1, SQLITE_STATIC);
                sqlite3_bind_int64(st, at++, 300 + i % 500);
                sqlite3_bind_int64(st, at++, 2000 + i % 20000);
                sqlite3_bind_int64(st, at++, 1000 + i % 97);
                sqlite3_bind_int64(st, at++, 20000 + i % 977);
                sqlite3_bind_text(st, at++, "completed", -1, SQLITE_STATIC);
                sqlite3_bind_null(st, at++);
                sqlite3_bind_int64(st, at++, 40);
                sqlite3_bind_int64(st, at++, 100 + i % 200);
                sqlite3_bind_int64(st, at++, 140 + i % 200);
            }
            must(sqlite3_step(st), db, "insert");
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
        }
        must(sqlite3_exec(db, "COMMIT", 0, 0, 0), db, "commit");
        total += cpu_us() - c0;
    }
    printf("%s: %.3f us CPU per row over %ld rows\n", variant, total / (double)i, i);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}
