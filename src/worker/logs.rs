//! The worker's half of `service logs`: one log session, opened by the worker to a manager
//! (moving to the next when it breaks), answering each request from the task log files
//! (`DIR/TASK.log` and the older copy `TASK.log.1`): the last lines, then, when following,
//! new lines as they are written.

use crate::client::Client;
use crate::core::limits::{MAX_LOG_LINE_BYTES, MAX_LOG_TAIL_BYTES, MAX_LOG_TAIL_LINES};
use crate::proto::v1 as pb;
use crate::worker::log_writer::{self, RECORD_OVERHEAD};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, warn, Instrument};

/// How often a followed file is checked for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Lines and bytes per upload message.
const LINES_PER_UPLOAD: usize = 256;
const UPLOAD_BYTES: usize = 1 << 20;
/// Bytes read from a followed file per poll.
const FOLLOW_READ_BYTES: u64 = 1 << 20;

pub fn file(dir: &Path, task_id: &str) -> PathBuf {
    dir.join(format!("{task_id}.log"))
}

pub fn rotated(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Splits `buf` into lines (without their newline), each cut into pieces of at most
/// `max` bytes; an unterminated last line stays in `carry` if `keep_partial`.
pub fn split_lines(buf: &[u8], carry: &mut Vec<u8>, keep_partial: bool, max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut data = std::mem::take(carry);
    data.extend_from_slice(buf);
    let mut rest: &[u8] = &data;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        out.extend(rest[..i].chunks(max).map(<[u8]>::to_vec));
        if i == 0 {
            out.push(Vec::new());
        }
        rest = &rest[i + 1..];
    }
    if !rest.is_empty() {
        if keep_partial && rest.len() < max {
            carry.extend_from_slice(rest);
        } else {
            out.extend(rest.chunks(max).map(<[u8]>::to_vec));
        }
    }
    out
}

/// Where a reader of a task log is: the file (by inode, so a rotation is noticed) and the
/// offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub ino: u64,
    pub offset: u64,
}

/// Stored lines are records: a payload of at most `MAX_LOG_LINE_BYTES` plus its time and
/// stream.
const STORED_LINE_BYTES: usize = MAX_LOG_LINE_BYTES + RECORD_OVERHEAD;

/// The last `want` lines of `path` (at most `max_bytes` of them), read backwards in blocks;
/// and the end of the file (where following continues). A missing file has no lines.
pub fn last_lines(path: &Path, want: usize, max_bytes: usize) -> std::io::Result<(Vec<Vec<u8>>, Position)> {
    use std::os::unix::fs::MetadataExt;
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Position::default())),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    let len = meta.len();
    let end = Position {
        ino: meta.ino(),
        offset: len,
    };
    if want == 0 {
        return Ok((Vec::new(), end));
    }
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let newlines = body.iter().filter(|&&b| b == b'\n').count();
        if newlines >= want || pos == 0 || buf.len() >= max_bytes {
            break;
        }
        let step = pos.min(64 * 1024);
        pos -= step;
        let mut block = vec![0u8; step as usize];
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
    }
    let mut lines = split_lines(&buf, &mut Vec::new(), false, STORED_LINE_BYTES);
    if pos > 0 && !lines.is_empty() {
        lines.remove(0); // began mid-line
    }
    let skip = lines.len().saturating_sub(want);
    Ok((lines.split_off(skip), end))
}

/// The last `want` lines of a task's output across its two files.
pub fn tail(dir: &Path, task_id: &str, want: usize) -> std::io::Result<(Vec<Vec<u8>>, Position)> {
    let current = file(dir, task_id);
    let (mut lines, end) = last_lines(&current, want, MAX_LOG_TAIL_BYTES)?;
    if lines.len() < want {
        let (older, _) = last_lines(&rotated(&current), want - lines.len(), MAX_LOG_TAIL_BYTES)?;
        lines.splice(0..0, older);
    }
    Ok((lines, end))
}

fn read_range(path: &Path, offset: u64, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// What was written to a task's log since `at` (at most `max` bytes per call), moving `at`
/// on. When the file was rotated, the rest of the old one (now `.1`) comes first.
pub fn read_new(path: &Path, at: &mut Position, max: u64) -> Vec<u8> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if meta.ino() != at.ino {
        let old = rotated(path);
        let rest = match std::fs::metadata(&old) {
            Ok(m) if at.ino != 0 && m.ino() == at.ino => read_range(&old, at.offset, max).unwrap_or_default(),
            _ => Vec::new(),
        };
        if rest.len() as u64 == max {
            at.offset += max; // more of the old file next time
            return rest;
        }
        *at = Position {
            ino: meta.ino(),
            offset: 0,
        };
        if !rest.is_empty() {
            return rest;
        }
    }
    if meta.len() < at.offset {
        at.offset = 0; // truncated in place: start over at the new beginning
    }
    if meta.len() == at.offset {
        return Vec::new();
    }
    let buf = read_range(path, at.offset, max).unwrap_or_default();
    at.offset += buf.len() as u64;
    buf
}

type Uploads = tokio::sync::mpsc::Sender<pb::LogUpload>;

/// Sends `lines` in uploads of at most `LINES_PER_UPLOAD` lines and `UPLOAD_BYTES` bytes
/// (well under the 4 MiB a gRPC message may have).
async fn send_lines(tx: &Uploads, request_id: u64, task_id: &str, lines: Vec<Vec<u8>>) -> bool {
    let mut batch: Vec<pb::LogLine> = Vec::new();
    let mut bytes = 0;
    let mut lines = lines.into_iter().peekable();
    while let Some(line) = lines.next() {
        bytes += line.len() + task_id.len() + 32;
        let rec = log_writer::parse(&line);
        batch.push(pb::LogLine {
            task_id: task_id.to_string(),
            line: rec.payload.to_vec(),
            time_unix_nanos: rec
                .time
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos() as i64),
            stream: rec.stream.to_string(),
            ..Default::default()
        });
        let full = batch.len() >= LINES_PER_UPLOAD || bytes >= UPLOAD_BYTES;
        if full || lines.peek().is_none() {
            let up = pb::LogUpload {
                request_id,
                lines: std::mem::take(&mut batch),
                ..Default::default()
            };
            bytes = 0;
            if tx.send(up).await.is_err() {
                return false;
            }
        }
    }
    true
}

/// Answers one request: the tail of each task, then (following) new output until cancelled.
async fn answer(dir: PathBuf, req: pb::LogRequest, tx: Uploads) {
    let want = (req.tail.max(0) as usize).min(MAX_LOG_TAIL_LINES);
    let mut follow: Vec<(String, Position, Vec<u8>)> = Vec::new();
    for task in &req.task_ids {
        let (lines, end) = match tail(&dir, task, want) {
            Ok(x) => x,
            Err(e) => {
                warn!(task = %task, error = %e, "cannot read task log");
                (Vec::new(), Position::default())
            }
        };
        if !send_lines(&tx, req.request_id, task, lines).await {
            return;
        }
        follow.push((task.clone(), end, Vec::new()));
    }
    if !req.follow {
        let _ = tx
            .send(pb::LogUpload {
                request_id: req.request_id,
                done: true,
                ..Default::default()
            })
            .await;
        return;
    }
    // Until the reader hangs up (the manager cancels) or the session ends.
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        for (task, at, carry) in follow.iter_mut() {
            let buf = read_new(&file(&dir, task), at, FOLLOW_READ_BYTES);
            if buf.is_empty() {
                continue;
            }
            let lines = split_lines(&buf, carry, true, STORED_LINE_BYTES);
            if !send_lines(&tx, req.request_id, task, lines).await {
                return;
            }
        }
    }
}

/// Holds a log session with some manager for ever, moving on when it breaks.
pub async fn session(client: Arc<Client>, node_id: String, dir: PathBuf) {
    let mut backoff = crate::retry::Backoff::new(200, 5_000);
    loop {
        let slot: Arc<Mutex<Option<Uploads>>> = Arc::default();
        let opened = client
            .call(|mut s| {
                let (tx, rx) = tokio::sync::mpsc::channel::<pb::LogUpload>(16);
                let hello = pb::LogUpload {
                    node_id: node_id.clone(),
                    ..Default::default()
                };
                let _ = tx.try_send(hello);
                *slot.lock().unwrap() = Some(tx);
                let uploads =
                    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) });
                async move { s.tasks.log_session(uploads).await }
            })
            .await;
        let mut orders = match opened {
            Ok(o) => o,
            Err(e) => {
                debug!(error = %e, "log session not opened; retrying");
                client.rotate();
                backoff.wait(None).await;
                continue;
            }
        };
        let tx = slot.lock().unwrap().take().expect("set by the call");
        debug!("log session open");
        backoff = crate::retry::Backoff::new(200, 5_000);
        let mut running: BTreeMap<u64, tokio::task::JoinHandle<()>> = BTreeMap::new();
        while let Ok(Some(order)) = orders.message().await {
            running.retain(|_, h| !h.is_finished());
            if order.cancel {
                if let Some(h) = running.remove(&order.request_id) {
                    h.abort();
                }
                continue;
            }
            let span = tracing::debug_span!("logs", request = order.request_id, tasks = order.task_ids.len());
            running.insert(
                order.request_id,
                tokio::spawn(answer(dir.clone(), order, tx.clone()).instrument(span)),
            );
        }
        for h in running.values() {
            h.abort();
        }
        debug!("log session broke; moving to another manager");
        client.rotate();
        backoff.wait(None).await;
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn split_keeps_partial_lines_for_later() {
        let mut carry = Vec::new();
        assert_eq!(
            split_lines(b"a\nb\npart", &mut carry, true, MAX_LOG_LINE_BYTES),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(carry, b"part");
        assert_eq!(
            split_lines(b"ial\n\n", &mut carry, true, MAX_LOG_LINE_BYTES),
            vec![b"partial".to_vec(), Vec::new()]
        );
        assert!(carry.is_empty());
        let long = vec![b'x'; MAX_LOG_LINE_BYTES + 10];
        let parts = split_lines(
            &[long.as_slice(), b"\n"].concat(),
            &mut carry,
            true,
            MAX_LOG_LINE_BYTES,
        );
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_LOG_LINE_BYTES, 10]
        );
    }

    #[test]
    fn tail_reads_across_the_rotated_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cur = file(dir.path(), "t");
        std::fs::write(rotated(&cur), "old1\nold2\n").unwrap();
        let body: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&cur, &body).unwrap();
        let (lines, end) = tail(dir.path(), "t", 3).unwrap();
        assert_eq!(
            lines,
            vec![
                b"line 19997".to_vec(),
                b"line 19998".to_vec(),
                b"line 19999".to_vec()
            ]
        );
        assert_eq!(end.offset, body.len() as u64);
        std::fs::write(&cur, "new\n").unwrap();
        let (lines, _) = tail(dir.path(), "t", 10).unwrap();
        assert_eq!(lines, vec![b"old1".to_vec(), b"old2".to_vec(), b"new".to_vec()]);
        assert_eq!(
            tail(dir.path(), "missing", 5).unwrap(),
            (Vec::new(), Position::default())
        );
        assert_eq!(tail(dir.path(), "t", 0).unwrap().0.len(), 0);
    }

    #[test]
    fn a_follower_reads_the_rest_of_a_rotated_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(dir.path(), "t");
        // Before the file exists: nothing, and nothing is lost once it appears.
        let mut at = tail(dir.path(), "t", 10).unwrap().1;
        assert!(read_new(&p, &mut at, 1 << 20).is_empty());
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(read_new(&p, &mut at, 1 << 20), b"a\nb\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"c\n")
            .unwrap();
        // Rotated (renamed) before the follower looked again, then new output.
        std::fs::rename(&p, rotated(&p)).unwrap();
        std::fs::write(&p, "d\n").unwrap();
        assert_eq!(read_new(&p, &mut at, 1), b"c");
        assert_eq!(read_new(&p, &mut at, 1 << 20), b"\n");
        assert_eq!(read_new(&p, &mut at, 1 << 20), b"d\n");
        assert!(read_new(&p, &mut at, 1 << 20).is_empty());
    }
}
