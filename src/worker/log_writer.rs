//! `warren log-writer FILE`: the process containerd's shim starts for each container
//! (a `binary://` log URI) with the container's stdout and stderr as fds 3 and 4. It
//! writes each line to `FILE` as `TIME STREAM PAYLOAD` (RFC 3339 with nanoseconds,
//! `stdout`/`stderr`) and starts a new file past `LOG_MAX_BYTES`, keeping one older copy
//! as `FILE.1`.
//!
//! Why a process of its own: the shim, not the worker agent, owns it, so a container keeps
//! writing (and its lines keep their times) while the agent is stopped or restarting,
//! and the agent never holds a container's pipes. Plain threads and std I/O: no runtime
//! to start, a few hundred KiB of its own memory per container.

use crate::core::limits::MAX_LOG_LINE_BYTES;
use crate::worker::logs::{rotated, split_lines};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// A task's log file is cut at this size (one older copy kept): 10 MiB + 10 MiB per task.
pub const LOG_MAX_BYTES: u64 = 10 << 20;

/// What a record adds to its payload: `TIME STREAM ` and the newline (at most 30 + 1 + 6
/// + 1 + 1). Readers cut stored lines at `MAX_LOG_LINE_BYTES + RECORD_OVERHEAD`.
pub const RECORD_OVERHEAD: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One stored line, as a reader sees it.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Unknown for a line written without one (by an older worker's plain file log).
    pub time: Option<SystemTime>,
    /// `stdout`, `stderr`, or empty when unknown.
    pub stream: &'a str,
    pub payload: &'a [u8],
}

/// Reads a stored line back; a line not in the record format is all payload.
pub fn parse(line: &[u8]) -> Record<'_> {
    let plain = Record {
        time: None,
        stream: "",
        payload: line,
    };
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(time), Some(stream)) = (parts.next(), parts.next()) else {
        return plain;
    };
    let stream = match stream {
        b"stdout" => "stdout",
        b"stderr" => "stderr",
        _ => return plain,
    };
    let Some(time) = std::str::from_utf8(time)
        .ok()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
    else {
        return plain;
    };
    Record {
        time: Some(time),
        stream,
        payload: parts.next().unwrap_or_default(),
    }
}

/// The file the records go to, cut at `max_bytes`.
pub struct Sink {
    path: PathBuf,
    file: File,
    len: u64,
    max_bytes: u64,
}

impl Sink {
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<Sink> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Sink {
            path: path.to_path_buf(),
            file,
            len,
            max_bytes,
        })
    }

    /// Appends one record (a single write, so a reader never sees half of one).
    pub fn write(&mut self, time: SystemTime, stream: Stream, payload: &[u8]) -> std::io::Result<()> {
        let mut rec = Vec::with_capacity(payload.len() + RECORD_OVERHEAD);
        write!(
            rec,
            "{} {} ",
            humantime::format_rfc3339_nanos(time),
            stream.name()
        )?;
        rec.extend_from_slice(payload);
        rec.push(b'\n');
        if self.len > 0 && self.len + rec.len() as u64 > self.max_bytes {
            // Rename, not copy-and-truncate: nothing is lost, and a follower still reading
            // the old file by its handle finds the rest of it under the new name.
            std::fs::rename(&self.path, rotated(&self.path))?;
            *self = Sink::open(&self.path, self.max_bytes)?;
        }
        self.file.write_all(&rec)?;
        self.len += rec.len() as u64;
        Ok(())
    }
}

/// Copies `input` to `sink` line by line until end of file, stamping each line with
/// `now()` when it is complete. A line longer than `MAX_LOG_LINE_BYTES` becomes several;
/// an unterminated last line is written at the end.
pub fn pump(
    mut input: impl Read,
    stream: Stream,
    sink: &Mutex<Sink>,
    now: impl Fn() -> SystemTime,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut carry = Vec::new();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let lines = split_lines(&buf[..n], &mut carry, true, MAX_LOG_LINE_BYTES);
        if !lines.is_empty() {
            let t = now();
            let mut s = sink.lock().unwrap();
            for l in lines {
                s.write(t, stream, &l)?;
            }
        }
    }
    if !carry.is_empty() {
        sink.lock().unwrap().write(now(), stream, &carry)?;
    }
    Ok(())
}

/// The process: fds 3 (stdout) and 4 (stderr) from the shim, fd 5 closed once the file
/// is open (the shim waits for that before it starts the container).
pub fn run(path: &Path) -> std::process::ExitCode {
    use std::os::fd::FromRawFd;
    // The shim sends SIGTERM as it closes the pipes when the task is deleted; the last
    // lines are still in them, so end at end of file instead (the shim kills us if we
    // take too long).
    // SAFETY: setting a signal to be ignored runs no handler code.
    #[cfg(not(madsim))]
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGTERM,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    let sink = match Sink::open(path, LOG_MAX_BYTES) {
        Ok(s) => Mutex::new(s),
        Err(e) => {
            eprintln!("warren log-writer: cannot open {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    };
    // SAFETY: the shim passes these three descriptors, and nothing else in this process
    // owns them.
    let (stdout, stderr, ready) =
        unsafe { (File::from_raw_fd(3), File::from_raw_fd(4), File::from_raw_fd(5)) };
    drop(ready);
    let failed = std::thread::scope(|s| {
        let sink = &sink;
        let err = s.spawn(move || pump(stderr, Stream::Stderr, sink, SystemTime::now));
        let out = pump(stdout, Stream::Stdout, sink, SystemTime::now);
        [out, err.join().unwrap_or(Ok(()))]
            .into_iter()
            .filter_map(Result::err)
            .inspect(|e| eprintln!("warren log-writer: {}: {e}", path.display()))
            .count()
    });
    if failed > 0 {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(5)
    }

    #[test]
    fn records_round_trip_and_plain_lines_are_all_payload() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        let sink = Mutex::new(Sink::open(&p, 1 << 20).unwrap());
        pump(
            &b"one\ntwo words\n\nno newline"[..],
            Stream::Stderr,
            &sink,
            || t(1_800_000_000),
        )
        .unwrap();
        let body = std::fs::read(&p).unwrap();
        let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], b"2027-01-15T08:00:00.000000005Z stderr one");
        let recs: Vec<Record> = lines.iter().map(|l| parse(l)).collect();
        assert_eq!(
            recs.iter().map(|r| r.payload).collect::<Vec<_>>(),
            vec![&b"one"[..], b"two words", b"", b"no newline"]
        );
        assert!(recs
            .iter()
            .all(|r| r.time == Some(t(1_800_000_000)) && r.stream == "stderr"));
        for plain in [
            &b"hello world"[..],
            b"",
            b"2026-13-99T00:00:00Z stdout x",
            b"2026-11-29T06:51:29Z other x",
        ] {
            assert_eq!(
                parse(plain),
                Record {
                    time: None,
                    stream: "",
                    payload: plain
                }
            );
        }
        assert_eq!(parse(b"2026-11-29T06:51:29Z stdout").payload, b"");
    }

    #[test]
    fn long_lines_are_cut_and_the_file_rotates_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.log");
        let sink = Mutex::new(Sink::open(&p, 4096).unwrap());
        let long = vec![b'x'; MAX_LOG_LINE_BYTES * 2 + 1];
        pump(&long[..], Stream::Stdout, &sink, || t(1)).unwrap();
        let input: String = (0..200).map(|i| format!("line {i}\n")).collect();
        pump(input.as_bytes(), Stream::Stdout, &sink, || t(2)).unwrap();
        let cur = std::fs::read(&p).unwrap();
        let old = std::fs::read(rotated(&p)).unwrap();
        assert!(
            cur.len() <= 4096 && old.len() <= 4096,
            "{} {}",
            cur.len(),
            old.len()
        );
        // The newest lines are all there, in order, across the two files.
        let all: Vec<u8> = [old, cur].concat();
        let payloads: Vec<&[u8]> = all
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse(l).payload)
            .filter(|p| p.starts_with(b"line"))
            .collect();
        let first: usize = std::str::from_utf8(&payloads[0][5..]).unwrap().parse().unwrap();
        let want: Vec<String> = (first..200).map(|i| format!("line {i}")).collect();
        assert_eq!(payloads, want.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
        // A long line was cut into pieces of at most MAX_LOG_LINE_BYTES.
        let p2 = dir.path().join("u.log");
        let sink = Mutex::new(Sink::open(&p2, 1 << 20).unwrap());
        pump(
            &[long.as_slice(), b"\n"].concat()[..],
            Stream::Stdout,
            &sink,
            || t(1),
        )
        .unwrap();
        let body = std::fs::read(&p2).unwrap();
        let sizes: Vec<usize> = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse(l).payload.len())
            .collect();
        assert_eq!(sizes, vec![MAX_LOG_LINE_BYTES, MAX_LOG_LINE_BYTES, 1]);
    }
}
