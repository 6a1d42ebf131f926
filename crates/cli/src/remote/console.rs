//! `dutlab console`: the console of a lease's device on this terminal (or pipe).
//!
//! ```text
//!  stdin ──(terminal: raw mode, escapes)──> WebSocket /leases/{id}/console[?write=true]
//!  stdout <──(terminal: TerminalFilter; else raw bytes)── history (≤ 1 MiB), then live
//! ```
//!
//! Invariants:
//! - Read-only unless `--write`: without it no byte of stdin is ever sent (the controller and
//!   the agent drop a read-only viewer's input too).
//! - On a terminal stdin the terminal is in raw mode exactly while attached; a guard restores
//!   it on every way out (return, error, panic). Enter `~.` leaves (ssh's escape), `~?`
//!   shows the escapes, `~~` types one `~`; read-only, Ctrl-C leaves too.
//! - DUT output is untrusted: on a terminal stdout it goes through
//!   [`driver::ansi::TerminalFilter`]; to a file or a pipe it is written as it came.
//! - Stdin is read by a thread of its own, so leaving never waits for a read to return.
//! - Exit codes: 0 left, stream ended, `--until` seen or `--timeout` over; 1 `--until` not
//!   seen before the end; the lease commands' codes for refusals (77 not the holder, 70 an
//!   ended lease, an unpowered device or a broken connection).

use super::leased::LeaseArg;
use super::{block_on, connect};
use crate::exit::{self, Exit};
use anyhow::Context;
use client::stream::{Incoming, StreamEnd, StreamSocket, Target};
use driver::ansi::{AnsiStripper, TerminalFilter};
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;
use tokio::sync::mpsc;

const HELP: &str = "On a terminal: Enter then ~. leaves, ~? lists the escapes, ~~ types a ~ \
(read-only: Ctrl-C leaves too). Output to a terminal has its escape sequences filtered \
(colours and cursor movement pass; titles, clipboard, hyperlinks and the rest are dropped).

Scripts: `printf 'echo done-$((6*7))\\n' | dutlab console --write --until done-42 --timeout 1m` \
types stdin, then reads until the text appears (history included: make the text something \
the command computes, not something it echoes).

Exit codes: 0 left, the console ended, --until seen or --timeout over; 1 --until not seen \
before the end; 64 usage or no lease (--lease or DUTLAB_LEASE); 69 controller unreachable; 70 \
other error (410: the lease has ended; 502: the device is not powered; a broken connection); \
77 not the lease's holder (403).";

/// What `--until` gives back when it never matched.
const NOT_SEEN: i32 = 1;

#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct ConsoleArgs {
    #[command(flatten)]
    lease: LeaseArg,
    /// Type on the console too (default: read-only).
    #[arg(long)]
    write: bool,
    /// Stop once the console shows this text (escape sequences removed; history included).
    #[arg(long, value_name = "TEXT", value_parser = parse_until)]
    until: Option<String>,
    /// Stop after this long (`30s`, `5m`).
    #[arg(long, value_name = "DURATION", value_parser = jobspec::parse_duration)]
    timeout: Option<Duration>,
}

fn parse_until(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the text may not be empty".into());
    }
    Ok(text.to_owned())
}

/// How an attachment ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The person typed the escape (or Ctrl-C read-only), or stdin of a terminal closed.
    Left,
    /// The controller closed the stream, with its reason.
    Closed(String),
    /// `--until` matched.
    Seen,
    /// `--timeout` passed.
    TimedOut,
}

/// `dutlab console`.
pub fn console(args: ConsoleArgs) -> i32 {
    block_on(async move {
        let id = args.lease.id()?;
        let client = connect()?;
        let mut socket = client
            .open_stream(id, Target::Console { write: args.write })
            .await
            .with_context(|| format!("lease {id}: cannot open the console"))?;
        let terminal = std::io::stdin().is_terminal();
        let raw = if terminal {
            Some(RawMode::enable()?)
        } else {
            None
        };
        let say = Say { raw: raw.is_some() };
        say.line(&format!("lease {id}: console attached"));
        if terminal {
            say.line("Enter ~. leaves, ~? lists the escapes");
        }
        if !args.write {
            say.line("read-only; --write to type");
        }
        let mut session = Session {
            write: args.write,
            terminal,
            keys: EscapeKeys::default(),
            told_read_only: false,
            screen: Screen::new(std::io::stdout().is_terminal()),
            until: args.until.as_deref().map(Until::new),
            say,
        };
        let input = (terminal || args.write).then(stdin_chunks);
        let end = session.run(&mut socket, input, args.timeout).await?;
        if !matches!(end, End::Closed(_)) {
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.close()).await;
        }
        drop(raw);
        let code = match (&end, &args.until) {
            (End::Seen, _) | (_, None) => 0,
            (_, Some(_)) => NOT_SEEN,
        };
        match end {
            End::Left => eprintln!("dutlab: lease {id}: left the console"),
            End::Seen => {}
            End::Closed(reason) if reason.is_empty() => {
                eprintln!("dutlab: lease {id}: the console closed")
            }
            End::Closed(reason) => eprintln!(
                "dutlab: lease {id}: the console closed: {}",
                runner::report::printable(&reason)
            ),
            End::TimedOut => eprintln!(
                "dutlab: lease {id}: --timeout of {:?} over",
                args.timeout.unwrap_or_default()
            ),
        }
        if code == NOT_SEEN
            && let Some(text) = &args.until
        {
            eprintln!("dutlab: lease {id}: {text:?} not seen");
        }
        Ok(code)
    })
}

/// One attachment's state.
struct Session {
    write: bool,
    terminal: bool,
    keys: EscapeKeys,
    told_read_only: bool,
    screen: Screen,
    until: Option<Until>,
    say: Say,
}

impl Session {
    async fn run(
        &mut self,
        socket: &mut StreamSocket,
        mut input: Option<mpsc::Receiver<Vec<u8>>>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<End> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut typed = Vec::new();
        loop {
            tokio::select! {
                incoming = socket.next() => match incoming {
                    Incoming::Bytes(bytes) => {
                        self.screen.show(&bytes).context("cannot write the console to stdout")?;
                        if self.until.as_mut().is_some_and(|u| u.seen(&bytes)) {
                            return Ok(End::Seen);
                        }
                    }
                    Incoming::Eof => self.say.line("the console ended"),
                    Incoming::End(StreamEnd::Closed(reason)) => return Ok(End::Closed(reason)),
                    Incoming::End(StreamEnd::Dropped(reason)) => {
                        return Err(Exit::new(
                            exit::SOFTWARE,
                            format!("the console's connection broke: {reason}"),
                        )
                        .into());
                    }
                },
                chunk = recv(&mut input) => {
                    let Some(chunk) = chunk else {
                        input = None;
                        if self.terminal {
                            return Ok(End::Left);
                        }
                        // The end of a script's input: the device hears it; output goes on.
                        socket.send(Vec::new()).await.map_err(broke)?;
                        continue;
                    };
                    typed.clear();
                    let escapes = if self.terminal {
                        self.keys.feed(&chunk, &mut typed)
                    } else {
                        typed.extend_from_slice(&chunk);
                        Escapes::default()
                    };
                    if escapes.help {
                        self.say.line("escapes (after Enter): ~. leave, ~? this list, ~~ type a ~");
                    }
                    if escapes.leave || (!self.write && typed.contains(&0x03)) {
                        return Ok(End::Left);
                    }
                    if typed.is_empty() {
                        continue;
                    }
                    if self.write {
                        socket.send(std::mem::take(&mut typed)).await.map_err(broke)?;
                    } else if !self.told_read_only {
                        self.told_read_only = true;
                        self.say.line("read-only: not typed; --write to type (Enter ~. leaves)");
                    }
                },
                _ = sleep_until(deadline) => return Ok(End::TimedOut),
            }
        }
    }
}

fn broke(end: StreamEnd) -> anyhow::Error {
    Exit::new(exit::SOFTWARE, format!("cannot type on the console: {end}")).into()
}

async fn recv(input: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match input {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads stdin on a thread of its own (a blocked read never holds up leaving: the process
/// exits around it); the channel closes at end of file or a read error.
fn stdin_chunks() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(4);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        });
    if spawned.is_err() {
        // No thread, no input: the channel is closed at once (its sender is gone).
        tracing::warn!("cannot start the stdin thread; no input");
    }
    rx
}

/// Messages for the person on stderr (with `\r\n` while the terminal is raw).
struct Say {
    raw: bool,
}

impl Say {
    fn line(&self, text: &str) {
        let end = if self.raw { "\r\n" } else { "\n" };
        eprint!("dutlab: {text}{end}");
    }
}

/// The terminal in raw mode; back to how it was when dropped (also while a panic unwinds,
/// and a panic hook restores it before the message is printed).
struct RawMode;

impl RawMode {
    fn enable() -> anyhow::Result<RawMode> {
        crossterm::terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::terminal::disable_raw_mode();
            previous(info);
        }));
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Where console bytes go: filtered for a terminal, as they came elsewhere.
struct Screen {
    filter: Option<TerminalFilter>,
    clean: Vec<u8>,
}

impl Screen {
    fn new(terminal: bool) -> Screen {
        Screen {
            filter: terminal.then(TerminalFilter::new),
            clean: Vec::new(),
        }
    }

    fn show(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        match &mut self.filter {
            Some(filter) => {
                self.clean.clear();
                filter.feed(bytes, &mut self.clean);
                out.write_all(&self.clean)?;
            }
            None => out.write_all(bytes)?,
        }
        out.flush()
    }
}

/// `--until`: the text in the console's output with escapes removed, across chunks.
struct Until {
    needle: Vec<u8>,
    stripper: AnsiStripper,
    /// The end of what was shown (fewer bytes than the needle) and the newest chunk.
    window: Vec<u8>,
}

impl Until {
    fn new(text: &str) -> Until {
        Until {
            needle: text.as_bytes().to_vec(),
            stripper: AnsiStripper::new(),
            window: Vec::new(),
        }
    }

    fn seen(&mut self, bytes: &[u8]) -> bool {
        self.stripper.feed(bytes, &mut self.window);
        if self
            .window
            .windows(self.needle.len())
            .any(|w| w == self.needle)
        {
            return true;
        }
        let keep = self.needle.len() - 1;
        let cut = self.window.len().saturating_sub(keep);
        self.window.drain(..cut);
        false
    }
}

/// What the escapes in some typed bytes asked for.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Escapes {
    leave: bool,
    help: bool,
}

/// Where the typist is, for ssh's escapes: `~` means something only first on a line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    #[default]
    LineStart,
    Inline,
    /// A `~` at the start of a line, held until the next key.
    Tilde,
}

/// Splits keys typed on a terminal into bytes for the console and escapes.
#[derive(Debug, Default)]
struct EscapeKeys {
    state: KeyState,
}

impl EscapeKeys {
    /// Appends the bytes to type of `input` to `out`; stops at `~.` (what follows is dropped).
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Escapes {
        let mut escapes = Escapes::default();
        for &b in input {
            self.state = match (self.state, b) {
                (KeyState::Tilde, b'.') => {
                    escapes.leave = true;
                    return escapes;
                }
                (KeyState::Tilde, b'?') => {
                    escapes.help = true;
                    KeyState::LineStart
                }
                (KeyState::Tilde, b'~') => {
                    out.push(b'~');
                    KeyState::Inline
                }
                (KeyState::Tilde, other) => {
                    out.extend_from_slice(&[b'~', other]);
                    line_state(other)
                }
                (KeyState::LineStart, b'~') => KeyState::Tilde,
                (_, other) => {
                    out.push(other);
                    line_state(other)
                }
            };
        }
        escapes
    }
}

fn line_state(typed: u8) -> KeyState {
    if matches!(typed, b'\r' | b'\n') {
        KeyState::LineStart
    } else {
        KeyState::Inline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(chunks: &[&[u8]]) -> (Vec<u8>, Escapes) {
        let mut k = EscapeKeys::default();
        let mut out = Vec::new();
        let mut all = Escapes::default();
        for c in chunks {
            let e = k.feed(c, &mut out);
            all.leave |= e.leave;
            all.help |= e.help;
            if e.leave {
                break;
            }
        }
        (out, all)
    }

    #[test]
    fn tilde_dot_after_enter_leaves_and_drops_what_follows() {
        let (out, e) = keys(&[b"ls\r~.rm -rf\r"]);
        assert_eq!(out, b"ls\r");
        assert!(e.leave);
        // At the very start, and split between reads.
        assert!(keys(&[b"~", b"."]).1.leave);
        assert!(keys(&[b"x\n~", b"."]).1.leave);
    }

    #[test]
    fn tilde_inside_a_line_or_doubled_is_typed() {
        let (out, e) = keys(&[b"cd ~.\r"]);
        assert_eq!(out, b"cd ~.\r");
        assert!(!e.leave);
        let (out, e) = keys(&[b"~~.\r~x"]);
        assert_eq!(out, b"~.\r~x");
        assert_eq!(e, Escapes::default());
    }

    #[test]
    fn tilde_question_mark_asks_for_help_and_types_nothing() {
        let (out, e) = keys(&[b"~?", b"~."]);
        assert!(out.is_empty());
        assert!(e.help && e.leave);
    }

    #[test]
    fn until_matches_across_chunks_and_escapes() {
        let mut u = Until::new("marker-42");
        assert!(!u.seen(b"echo marker-$((6*7))\r\nmark"));
        assert!(!u.seen(b"er-\x1b[1m"));
        assert!(u.seen(b"42\r\n"));
        let mut u = Until::new("x");
        assert!(!u.seen(b""));
        assert!(u.seen(b"x"));
    }

    #[test]
    fn a_terminal_gets_filtered_bytes() {
        let mut s = Screen::new(true);
        s.clean.clear();
        if let Some(f) = &mut s.filter {
            f.feed(b"\x1b]52;c;aGk=\x07\x1b[31mred\x1b[0m", &mut s.clean);
        }
        assert_eq!(s.clean, b"\x1b[31mred\x1b[0m");
        assert!(Screen::new(false).filter.is_none());
    }
}
