//! The MultiNode helper scripts run for real on the host: by busybox ash with nothing but
//! busybox applets on `PATH` (the DUT's userland), by dash and by bash. The test plays the
//! runner at the wire: it reads the call line a helper prints, passes it through
//! `parse_call` and a `Coordinator`, and types the reply's console line on the helper's stdin.
//! Checked: the exact lines printed, exit codes, and the cache file.

use multinode::{Coordinator, InstanceId, Member, Roster, helper_scripts, parse_call};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A shell to test with.
#[derive(Clone, Copy, Debug)]
struct Sh {
    program: &'static str,
    /// Only busybox applets on PATH (else the host's PATH).
    busybox_path: bool,
}

fn shells() -> Vec<Sh> {
    assert!(
        Path::new("/usr/bin/busybox").exists(),
        "busybox is installed at /usr/bin/busybox (scripts/install-deps.sh)"
    );
    let mut shells = vec![Sh {
        program: "/usr/bin/busybox",
        busybox_path: true,
    }];
    for program in ["/usr/bin/dash", "/usr/bin/bash"] {
        if Path::new(program).exists() {
            shells.push(Sh {
                program,
                busybox_path: false,
            });
        }
    }
    shells
}

fn roster() -> Roster {
    let member = |name: &str, role: &str| Member {
        name: name.into(),
        role: role.into(),
    };
    Roster {
        members: vec![
            member("17.0", "server"),
            member("17.1", "client"),
            member("17.2", "client"),
        ],
    }
}

/// One member's DUT: its helpers in `bin/`, its cache file in `tmp/`.
struct Dut {
    dir: tempfile::TempDir,
    sh: Sh,
}

impl Dut {
    fn new(sh: Sh, roster: &Roster, me: InstanceId) -> Dut {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        for sub in ["bin", "applets", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).expect("a directory");
        }
        for (name, text) in helper_scripts(roster, me) {
            let path = root.join("bin").join(name);
            std::fs::write(&path, text).expect("helper written");
            make_executable(&path);
        }
        if sh.busybox_path {
            let list = Command::new("/usr/bin/busybox")
                .arg("--list")
                .output()
                .expect("busybox --list");
            for applet in String::from_utf8_lossy(&list.stdout).lines() {
                std::os::unix::fs::symlink("/usr/bin/busybox", root.join("applets").join(applet))
                    .expect("an applet link");
            }
        }
        Dut { dir, sh }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("tmp/lava_multi_node_cache.txt")
    }

    fn cache_text(&self) -> Option<String> {
        std::fs::read_to_string(self.cache()).ok()
    }

    /// `sh bin/<helper> args...`, as a test step runs it.
    fn command(&self, helper: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.sh.program);
        if self.sh.busybox_path {
            cmd.arg("sh");
        }
        let path = if self.sh.busybox_path {
            self.dir.path().join("applets").display().to_string()
        } else {
            std::env::var("PATH").unwrap_or_default()
        };
        cmd.arg(self.dir.path().join("bin").join(helper))
            .args(args)
            .env_clear()
            .env(
                "PATH",
                format!("{}:{path}", self.dir.path().join("bin").display()),
            )
            .env("LAVA_MULTI_NODE_CACHE", self.cache())
            .current_dir(self.dir.path());
        cmd
    }

    /// Runs a helper to its end with `input` on stdin.
    fn run(&self, helper: &str, args: &[&str], input: &str) -> Out {
        let mut child = self
            .command(helper, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the shell starts");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).expect("input written");
        drop(stdin);
        let out = child.wait_with_output().expect("the helper ends");
        Out {
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts a helper that talks to the group through [`Group`].
    fn spawn(&self, helper: &str, args: &[&str]) -> Running {
        let mut child = self
            .command(helper, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the shell starts");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Running {
            child,
            stdin: Some(stdin),
            stdout,
        }
    }
}

#[derive(Debug)]
struct Out {
    code: i32,
    stdout: Vec<String>,
    stderr: String,
}

/// A helper process whose console the test reads and types into.
struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self
            .stdout
            .read_line(&mut line)
            .expect("read the helper's output")
        {
            0 => None,
            _ => Some(line.trim_end_matches('\n').to_string()),
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        // As LAVA's dispatcher: the line, then a bare newline.
        stdin
            .write_all(format!("{line}\n\n").as_bytes())
            .expect("typed");
        stdin.flush().expect("flushed");
    }

    fn finish(mut self) -> i32 {
        drop(self.stdin.take());
        self.child
            .wait()
            .expect("the helper ends")
            .code()
            .expect("exited")
    }
}

/// The runner's side for a whole group: one coordinator, each member's seq.
struct Group {
    coordinator: Coordinator,
    seq: Vec<u64>,
}

impl Group {
    fn new(roster: Roster) -> Group {
        Group {
            seq: vec![0; roster.len()],
            coordinator: Coordinator::new(roster),
        }
    }

    /// Reads `member`'s call line from `helper`, applies it, and types every due reply into
    /// the helper of the member it is for (`consoles[n]` for member n, if running).
    fn step(&mut self, member: InstanceId, consoles: &mut [Option<&mut Running>]) -> String {
        let helper = consoles[member.index()]
            .as_mut()
            .expect("the member's helper runs");
        let line = helper.line().expect("the helper prints its call");
        let call = parse_call(line.as_bytes())
            .expect("a multinode line")
            .expect("a valid call");
        self.seq[member.index()] += 1;
        let due = self
            .coordinator
            .call(member, self.seq[member.index()], call);
        for (to, _, reply) in due {
            if let (Some(text), Some(console)) =
                (reply.console_line(), consoles[to.index()].as_mut())
            {
                console.type_line(&text);
            }
        }
        line
    }
}

#[test]
fn send_then_wait_through_the_group_fills_the_cache() {
    for sh in shells() {
        let roster = roster();
        let duts: Vec<Dut> = roster.ids().map(|id| Dut::new(sh, &roster, id)).collect();
        let mut group = Group::new(roster);
        // Client 17.1 waits first; the server sends; a second sender adds its data.
        let mut wait = duts[1].spawn("lava-wait", &["ready"]);
        let mut send = duts[0].spawn(
            "lava-send",
            &[
                "ready",
                "ip=10.0.0.1",
                "motd=hello  world",
                "junk",
                "url=http://h/?a=b",
            ],
        );
        assert_eq!(
            group.step(InstanceId(1), &mut [None, Some(&mut wait), None]),
            "<LAVA_MULTI_NODE> <LAVA_WAIT ready>",
            "{sh:?}"
        );
        assert_eq!(
            group.step(InstanceId(0), &mut [Some(&mut send), Some(&mut wait), None]),
            "<LAVA_MULTI_NODE> <LAVA_SEND ready ip=10.0.0.1 motd=hello  world url=http://h/?a=b>",
            "{sh:?}"
        );
        assert_eq!(send.finish(), 0, "{sh:?}");
        assert_eq!(wait.finish(), 0, "{sh:?}");
        assert_eq!(
            duts[1].cache_text().as_deref(),
            Some("17.0:ip=10.0.0.1\n17.0:motd=hello  world\n17.0:url=http://h/?a=b\n"),
            "{sh:?}"
        );
        // A late wait by another member returns at once, with every sender's data.
        let mut send = duts[2].spawn("lava-send", &["ready", "port=22", "note=a 17.0:x"]);
        group.step(InstanceId(2), &mut [None, None, Some(&mut send)]);
        assert_eq!(send.finish(), 0);
        let mut wait = duts[2].spawn("lava-wait", &["ready"]);
        group.step(InstanceId(2), &mut [None, None, Some(&mut wait)]);
        assert_eq!(wait.finish(), 0, "{sh:?}");
        assert_eq!(
            duts[2].cache_text().as_deref(),
            Some(
                "17.0:ip=10.0.0.1\n17.0:motd=hello  world\n17.0:url=http://h/?a=b\n\
                 17.2:port=22\n17.2:note=a 17.0:x\n"
            ),
            "{sh:?}: a value holding 'member:' without '=' stays whole"
        );
    }
}

#[test]
fn wait_all_with_a_role_and_sync_across_three_members() {
    for sh in shells() {
        let roster = roster();
        let duts: Vec<Dut> = roster.ids().map(|id| Dut::new(sh, &roster, id)).collect();
        let mut group = Group::new(roster);
        let mut server = duts[0].spawn("lava-wait-all", &["done", "client"]);
        assert_eq!(
            group.step(InstanceId(0), &mut [Some(&mut server), None, None]),
            "<LAVA_MULTI_NODE> <LAVA_WAIT_ALL done client>"
        );
        for n in [1, 2] {
            let mut send = duts[n].spawn("lava-send", &["done", &format!("result=ok{n}")]);
            let mut consoles: [Option<&mut Running>; 3] = [Some(&mut server), None, None];
            consoles[n] = Some(&mut send);
            group.step(InstanceId(n as u32), &mut consoles);
            assert_eq!(send.finish(), 0);
        }
        assert_eq!(server.finish(), 0, "{sh:?}");
        assert_eq!(
            duts[0].cache_text().as_deref(),
            Some("17.1:result=ok1\n17.2:result=ok2\n"),
            "{sh:?}"
        );
        // A barrier: nobody returns before the third member arrives; then all do, and the
        // cache is emptied (LAVA's lava-sync does so).
        let mut syncs: Vec<Running> = duts
            .iter()
            .map(|d| d.spawn("lava-sync", &["end"]))
            .collect();
        for n in 0..3 {
            let [a, b, c] = &mut syncs[..] else {
                unreachable!()
            };
            let line = group.step(InstanceId(n), &mut [Some(a), Some(b), Some(c)]);
            assert_eq!(line, "<LAVA_MULTI_NODE> <LAVA_SYNC end>");
        }
        for s in syncs {
            assert_eq!(s.finish(), 0, "{sh:?}");
        }
        assert_eq!(duts[0].cache_text(), None, "{sh:?}");
    }
}

#[test]
fn nacks_and_end_of_input_exit_1() {
    for sh in shells() {
        let roster = roster();
        let dut = Dut::new(sh, &roster, InstanceId(1));
        std::fs::write(dut.cache(), "old\n").expect("cache written");
        let out = dut.run(
            "lava-wait-all",
            &["never"],
            "noise\n<LAVA_WAIT_COMPLETE 17.0:a=b>\n<LAVA_WAIT_ALL_COMPLETE nack>\n",
        );
        assert_eq!(out.code, 1, "{sh:?} {out:?}");
        assert_eq!(out.stdout, ["<LAVA_MULTI_NODE> <LAVA_WAIT_ALL never>"]);
        assert!(out.stderr.contains("nack"), "{sh:?} {out:?}");
        assert_eq!(dut.cache_text(), None, "{sh:?}");
        let out = dut.run("lava-sync", &["s"], "");
        assert_eq!(out.code, 1, "{sh:?} {out:?}");
        assert!(out.stderr.contains("end of input"), "{out:?}");
        let out = dut.run("lava-wait", &["w"], "<LAVA_WAIT_COMPLETE>\n");
        assert_eq!((out.code, dut.cache_text()), (0, None), "{sh:?} {out:?}");
    }
}

#[test]
fn bad_arguments_print_no_call() {
    for sh in shells() {
        let dut = Dut::new(sh, &roster(), InstanceId(0));
        for (helper, args) in [
            ("lava-send", &[][..]),
            ("lava-send", &["a=b"][..]),
            ("lava-send", &["has space"][..]),
            ("lava-send", &["id", "k=<LAVA_SIGNAL_TESTCASE"][..]),
            ("lava-send", &["id", "k=two\nlines"][..]),
            ("lava-wait", &[][..]),
            ("lava-wait-all", &["id", "r$le"][..]),
            ("lava-sync", &[""][..]),
            ("lava-echo-ipv4", &[][..]),
        ] {
            let out = dut.run(helper, args, "");
            assert_eq!(out.code, 1, "{sh:?} {helper} {args:?} {out:?}");
            assert!(out.stdout.is_empty(), "{sh:?} {helper} {args:?} {out:?}");
            assert!(!out.stderr.is_empty(), "{sh:?} {helper} {args:?}");
        }
        // Arguments that are not KEY=VALUE are skipped with a warning, as LAVA skips them.
        let out = dut.run(
            "lava-send",
            &["id", "plain", "=v", "k=", "-k=v", "ok=1"],
            "",
        );
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.stdout, ["<LAVA_MULTI_NODE> <LAVA_SEND id ok=1>"]);
        assert_eq!(out.stderr.lines().count(), 4, "{out:?}");
    }
}

#[test]
fn group_role_self_and_config() {
    for sh in shells() {
        let roster = roster();
        let dut = Dut::new(sh, &roster, InstanceId(2));
        let run = |helper: &str, args: &[&str]| {
            let out = dut.run(helper, args, "");
            (out.code, out.stdout)
        };
        let lines = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(run("lava-self", &[]), (0, lines(&["17.2"])), "{sh:?}");
        assert_eq!(run("lava-role", &[]), (0, lines(&["client"])), "{sh:?}");
        assert_eq!(
            run("lava-role", &["list"]),
            (0, lines(&["server", "client"])),
            "{sh:?}"
        );
        assert_eq!(
            run("lava-group", &[]),
            (0, lines(&["17.0\tserver", "17.1\tclient", "17.2\tclient"])),
            "{sh:?}"
        );
        assert_eq!(
            run("lava-group", &["client"]),
            (0, lines(&["17.1", "17.2"])),
            "{sh:?}"
        );
        assert_eq!(run("lava-group", &["nobody"]), (1, vec![]), "{sh:?}");
        assert_eq!(
            run("lava-echo-config", &[]),
            (1, lines(&["no shared config"])),
            "{sh:?}"
        );
        assert_eq!(
            run("lava-echo-ipv4", &["lo"]),
            (0, lines(&["127.0.0.1"])),
            "{sh:?}"
        );
        assert_eq!(run("lava-echo-ipv4", &["no-such-if0"]).0, 1, "{sh:?}");
    }
}

#[test]
fn every_call_line_a_helper_prints_is_accepted_by_parse_call() {
    for sh in shells() {
        let dut = Dut::new(sh, &roster(), InstanceId(0));
        for (helper, args) in [
            (
                "lava-send",
                &["a.b:c+d-e_f", "k.e-y_1=v a=l u e", "x=ünï"][..],
            ),
            ("lava-wait", &["a"][..]),
            ("lava-wait-all", &["a", "client"][..]),
            ("lava-sync", &["a"][..]),
        ] {
            let out = dut.run(helper, args, "");
            let call = parse_call(out.stdout[0].as_bytes());
            assert!(
                matches!(call, Some(Ok(_))),
                "{sh:?} {helper} {out:?} {call:?}"
            );
        }
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
