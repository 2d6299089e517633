//! Every size, count and duration a caller controls, in one place. docs/operations.md
//! ("Limits") lists them with the error each one gives; keep the two in step.

/// Most replicas one service may ask for (10,000 before state format 0xA5: a command asking
/// for more is stored and sent as 0xA5, which older managers refuse instead of applying
/// differently).
pub const MAX_REPLICAS: i64 = 100_000;
/// Most tasks a rolling update replaces at once (0 = all).
pub const MAX_PARALLELISM: i64 = 10_000;
/// An image reference, in bytes (Docker's own limit on a reference is 255 per name component).
pub const MAX_IMAGE_BYTES: usize = 512;
/// Environment variables of one service: count, key, value and all of them together.
pub const MAX_ENV_VARS: usize = 512;
pub const MAX_ENV_KEY_BYTES: usize = 256;
pub const MAX_ENV_VALUE_BYTES: usize = 16 * 1024;
pub const MAX_ENV_TOTAL_BYTES: usize = 32 * 1024;
/// Labels of one service or node: count, key, value.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_BYTES: usize = 128;
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// Command plus args of one service: count and bytes together.
pub const MAX_COMMAND_ITEMS: usize = 256;
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Placement constraints of one service, and the length of each.
pub const MAX_CONSTRAINTS: usize = 32;
pub const MAX_CONSTRAINT_BYTES: usize = 256;
/// A whole service spec as stored (bincode), so that any number of tasks of one service
/// fit an assignment page and any service fits a reply.
pub const MAX_SPEC_BYTES: usize = 96 * 1024;
/// Earlier spec versions a service keeps for rollback (`service inspect` lists them), beyond
/// those its tasks still run.
pub const SPEC_HISTORY: usize = 5;
/// Rolling update settings: the delay between slots, the monitor period, a new task's time
/// to come up.
pub const MAX_UPDATE_DELAY_MS: u64 = 3600 * 1000;
pub const MAX_UPDATE_MONITOR_MS: u64 = 3600 * 1000;
pub const MAX_UPDATE_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Health checks: probe period and timeout (1 s to 1 h), retries, start period.
pub const MIN_HEALTH_PERIOD_MS: u64 = 1_000;
pub const MAX_HEALTH_PERIOD_MS: u64 = 3600 * 1000;
pub const MAX_HEALTH_RETRIES: u32 = 100;
/// Restart delay and stop timeout (Docker has no bound; a day and an hour are generous).
pub const MAX_RESTART_DELAY_MS: u64 = 24 * 3600 * 1000;
pub const MAX_STOP_TIMEOUT_MS: u64 = 3600 * 1000;
/// Task reports in one worker heartbeat, and their fields (a worker sends more in later beats).
pub const MAX_REPORTS_PER_HEARTBEAT: usize = 256;
pub const MAX_TASK_ID_BYTES: usize = 64;
pub const MAX_REPORT_MESSAGE_BYTES: usize = 1024;
pub const MAX_CONTAINER_ID_BYTES: usize = 256;
/// A node's address as a worker reports it (HOST:PORT or a host name).
pub const MAX_NODE_ADDRESS_BYTES: usize = 256;
/// A build description a node reports (`warren version`).
pub const MAX_AGENT_VERSION_BYTES: usize = 128;
/// Live (unexpired) join tokens per role; issue with --rotate to start over.
pub const MAX_LIVE_TOKENS_PER_ROLE: usize = 100;
/// Longest join token lifetime: a year.
pub const MAX_TOKEN_TTL_MS: i64 = 365 * 24 * 3600 * 1000;
/// Unexpired certificates one holder (node or admin name) may have at once: renewing at half
/// the lifetime leaves two; more means a caller renewing in a loop.
pub const MAX_LIVE_CERTS_PER_HOLDER: usize = 8;
/// Longest certificate lifetime (`cluster admin-cert --ttl`, `cluster init --cert-ttl`).
pub const MAX_CERT_TTL_MS: i64 = 365 * 24 * 3600 * 1000;
/// Shortest node certificate lifetime (`cluster init --cert-ttl`; short ones are for tests).
pub const MIN_CERT_TTL_MS: i64 = 10_000;
/// Largest CA certificate or key stored in the replicated state.
pub const MAX_CA_BYTES: usize = 16 * 1024;
/// Raft terms a message may be ahead of this manager's; a larger jump is refused before
/// anything is persisted (a real cluster needs one term per election).
pub const MAX_TERM_JUMP: u64 = 1_000_000;
/// Request-id de-duplication table: entries and bytes (answers, not whole results).
pub const MAX_REMEMBERED_REQUESTS: usize = 10_000;
pub const MAX_REMEMBERED_BYTES: usize = 2 * 1024 * 1024;
/// A request id a client supplies (gRPC metadata `x-warren-request-id`).
pub const MAX_REQUEST_ID_BYTES: usize = 64;
/// Longest error message quoted back to a caller; longer input is cut with a note.
pub const MAX_QUOTED_BYTES: usize = 128;
/// Bytes of one reply page (list calls, assignment pages); gRPC's default receive limit is
/// 4 MiB and a page must stay well under it.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Open assignment streams per worker node (a worker needs one; reconnects overlap briefly).
pub const MAX_STREAMS_PER_NODE: usize = 4;
/// Open API connections per manager; more are closed at once. Room for 5,000 workers (each
/// holds at most one connection to each manager, `client::Client`) on one manager after the
/// others are lost, with 3,000 to spare for operators and peers.
pub const MAX_API_CONNECTIONS: usize = 8192;
/// Of a server's connection cap, the part kept for operators and managers
/// (`authz::may_hold_reserved_connection`): an eighth, at least 4, at most this many. When
/// workers (a large cluster after a manager loss, or one worker's stolen certificate) hold
/// every other connection, `warren` commands and the other managers still get in.
pub const MAX_RESERVED_CONNECTIONS: usize = 256;

/// How many of `cap` connections are kept for operators and managers.
pub fn reserved_connections(cap: usize) -> usize {
    (cap / 8).clamp(4, MAX_RESERVED_CONNECTIONS).min(cap / 2)
}
/// A new connection must complete its HTTP/2 preface within this long.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Requests and streams open at once on one connection (HTTP/2 `MAX_CONCURRENT_STREAMS`);
/// a client past it waits for one to end. tonic sets no bound of its own. A follower forwards
/// its clients' writes to the leader on one connection, so this is also how many of them
/// are in flight at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;

/// `service logs`: tasks one request may cover (else name one with --task), lines and bytes
/// a tail may return per task, and the longest line (longer ones are split).
pub const MAX_LOG_TASKS: usize = 1_000;
pub const MAX_LOG_TAIL_LINES: usize = 10_000;
pub const MAX_LOG_TAIL_BYTES: usize = 4 << 20;
pub const MAX_LOG_LINE_BYTES: usize = 16 * 1024;

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// How many characters of a task id the CLI shows (`service ps`, `service logs`).
pub const SHORT_ID_CHARS: usize = 12;
/// The fewest characters `service logs --task` takes to find a task by.
pub const MIN_TASK_ID_PREFIX: usize = 6;

/// The part of an id the CLI shows: for an id made by `id_from` (25 hex digits, the
/// creation time's 11 first, so ids made close together share them), the first
/// `SHORT_ID_CHARS` of its random part; for any other id, its first `SHORT_ID_CHARS`.
pub fn short_id(id: &str) -> &str {
    match random_part(id) {
        Some(r) => prefix(r, SHORT_ID_CHARS),
        None => prefix(id, SHORT_ID_CHARS),
    }
}

/// Whether `given` names the task `id`: a prefix of the whole id, or of its random part
/// (what `short_id` shows begins it). The caller asks for `MIN_TASK_ID_PREFIX` characters.
pub fn names_task(id: &str, given: &str) -> bool {
    id.starts_with(given) || random_part(id).is_some_and(|r| r.starts_with(given))
}

/// Hex digits of an id made by `id_from`: the time's, then the random part's.
const ID_TIME_DIGITS: usize = 11;
const ID_RANDOM_DIGITS: usize = 14;

/// An id made at `now_ms` from `random` bits: 25 lowercase hex digits, the milliseconds (11
/// digits, 44 bits: until the year 2527) then 56 random bits. Ids made later sort later, so
/// the state's maps (ordered by id) take new services, tasks and request ids at their right
/// edge: a write copies the one tree node readers share there, not one anywhere in the tree
/// per write, and a diff of two states walks only that edge (issue #16). A clock that steps
/// back costs only that locality; ids stay unique by their random part.
pub fn id_from(now_ms: i64, random: u128) -> String {
    let ms = now_ms.max(0) as u64 & ((1 << (4 * ID_TIME_DIGITS)) - 1);
    let random = (random >> (128 - 4 * ID_RANDOM_DIGITS)) as u64;
    format!("{ms:0t$x}{random:0r$x}", t = ID_TIME_DIGITS, r = ID_RANDOM_DIGITS)
}

/// The random part of an id made by `id_from`; None for any other id.
fn random_part(id: &str) -> Option<&str> {
    (id.len() == ID_TIME_DIGITS + ID_RANDOM_DIGITS && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| &id[ID_TIME_DIGITS..])
}

/// `text` cut to `MAX_QUOTED_BYTES` for an error that names it, with its length when cut (a
/// 20,000-character name must not come back whole: the reply would outgrow what a client
/// accepts).
pub fn cut(text: &str) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return text.to_string();
    }
    format!("{}... ({} bytes)", prefix(text, MAX_QUOTED_BYTES), text.len())
}

/// `text` quoted for an error message: at most `MAX_QUOTED_BYTES`, with a note of the length.
pub fn quote(text: &str) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return format!("{text:?}");
    }
    format!("{:?}... ({} bytes)", prefix(text, MAX_QUOTED_BYTES), text.len())
}

/// Largest backup (`cluster backup`, `cluster init --restore`): the encoded replicated state.
/// A restore is one log entry, so it stays under what managers accept in one message (64 MiB).
pub const MAX_BACKUP_BYTES: u64 = 60 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_connections_are_an_eighth_of_the_cap_within_bounds() {
        for (cap, reserved) in [(16, 4), (64, 8), (1024, 128), (8192, 256), (6, 3), (0, 0)] {
            assert_eq!(reserved_connections(cap), reserved, "cap {cap}");
        }
    }

    #[test]
    fn quote_cuts_long_input() {
        assert_eq!(quote("ab"), "\"ab\"");
        let long = "é".repeat(1000);
        let q = quote(&long);
        assert!(q.len() < MAX_QUOTED_BYTES + 40, "{q}");
        assert!(q.ends_with("(2000 bytes)"), "{q}");
    }

    #[test]
    fn ids_sort_by_time_and_show_their_random_part() {
        let now_ms = 1_764_700_000_000; // 2025-12-02
        let random = 0xa3b4_c5d6_e7f8_09ab_cdef_0123_4567_89ab_u128;
        let id = id_from(now_ms, random);
        assert_eq!(id, "19ae0510f00a3b4c5d6e7f809");
        assert_eq!(short_id(&id), "a3b4c5d6e7f8");
        assert!(names_task(&id, "a3b4c5") && names_task(&id, "19ae0510f00a3b"));
        // Later sorts after, whatever the random bits; the time never spills into them.
        assert!(id_from(now_ms + 1, 0) > id_from(now_ms, u128::MAX));
        assert_eq!(id_from(-5, 0), "0".repeat(25));
        assert_eq!(id_from(i64::MAX, u128::MAX), "f".repeat(25));
    }

    #[test]
    fn short_ids_show_the_random_part_and_name_tasks_by_either_prefix() {
        // (id, shown, a given prefix, names it)
        let new = "0019ad6e1f2a3b4c5d6e7f809"; // time 0019ad6e1f2, then random
        let cases = [
            (new, "a3b4c5d6e7f8", "a3b4c5", true),
            (new, "a3b4c5d6e7f8", "a3b4c5d6e7f809", true),
            (new, "a3b4c5d6e7f8", "0019ad6e1f2a", true),
            (new, "a3b4c5d6e7f8", "0019ad", true),
            (new, "a3b4c5d6e7f8", "b4c5d6", false),
            (new, "a3b4c5d6e7f8", "a3b4c5d6e7f8090", false),
            // Not made by new_id: shown and found by its beginning only.
            ("t1", "t1", "t1", true),
            ("web-1-task-abcdef", "web-1-task-a", "task-a", false),
            ("web-1-task-abcdef", "web-1-task-a", "web-1-", true),
            ("0019ad6e1f2a3b4c5d6e7f80g", "0019ad6e1f2a", "a3b4c5", false),
        ];
        for (id, shown, given, names) in cases {
            assert_eq!(short_id(id), shown, "{id}");
            assert_eq!(names_task(id, given), names, "{id} {given}");
        }
    }
}
