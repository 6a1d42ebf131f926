#![allow(clippy::unwrap_used)]
use super::script::*;
use super::sources::*;
use super::*;

#[tokio::test]
async fn lab_git_connects_to_the_pinned_address_without_the_host_config() {
    // `pinned.example` exists only in the injected table: if git connects at all, it
    // connected to the address the policy checked (curloptResolve), not to DNS.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::thread::spawn(move || listener.accept().is_ok());
    let mut policy = HostPolicy::lab(
        &[],
        vec![crate::policy::Cidr::parse("127.0.0.1").unwrap()],
        crate::policy::DecompressLimits::default(),
    )
    .unwrap();
    let mut table = BTreeMap::new();
    table.insert(
        "pinned.example".to_string(),
        vec!["127.0.0.1".parse().unwrap()],
    );
    policy.resolver = crate::policy::Resolver::Fixed(table);
    let resolver = policy.resolver.clone();
    let work = tempfile::tempdir().unwrap();
    let url = format!("https://pinned.example:{port}/r.git");
    let source = GitSource {
        repository: &url,
        revision: None,
        branch: None,
    };
    let e = source
        .run(
            work.path(),
            work.path(),
            &work.path().join("repos/0"),
            &policy,
        )
        .await
        .unwrap_err();
    assert!(
        accepted.join().unwrap(),
        "git never connected to the pinned address"
    );
    assert!(e.contains("cannot clone"), "{e}");
    // Refused before git runs: loopback without the operator's allowance.
    let mut strict =
        HostPolicy::lab(&[], Vec::new(), crate::policy::DecompressLimits::default()).unwrap();
    strict.resolver = resolver;
    let e = source
        .run(
            work.path(),
            work.path(),
            &work.path().join("repos/1"),
            &strict,
        )
        .await
        .unwrap_err();
    assert!(e.contains("loopback"), "{e}");
}

#[test]
fn lab_remotes_are_https_urls_only() {
    let r = lab_remote("https://git.example.org:8443/a/b.git").unwrap();
    assert_eq!((r.host.as_str(), r.port), ("git.example.org", 8443));
    assert_eq!(
        lab_remote("https://[2001:db8::1]/x").unwrap().host,
        "[2001:db8::1]"
    );
    for refused in [
        "/srv/git/secret",
        "repo",
        "../other",
        "file:///srv/git/secret",
        "ssh://git@example.org/x",
        "git@example.org:x.git",
        "ext::sh -c touch% /tmp/pwned",
        "http://example.org/x",
        "git://example.org/x",
        "HTTPS://example.org/x",
    ] {
        assert!(lab_remote(refused).is_err(), "{refused}");
    }
}

#[test]
fn quoting_keeps_values_literal() {
    assert_eq!(quote("a b"), "'a b'");
    assert_eq!(quote("it's $(rm -rf /)"), r"'it'\''s $(rm -rf /)'");
}

#[test]
fn identifiers() {
    assert!(is_identifier("TEST_DIR"));
    assert!(is_identifier("_x1"));
    assert!(!is_identifier("1x"));
    assert!(!is_identifier("a-b"));
    assert!(!is_identifier("a;b"));
    assert!(!is_identifier(""));
}

fn tar_with(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        // set_path refuses '..'; write the name bytes directly for hostile members.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if kind.is_symlink() {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn archive_unpacks_files_and_strips_components() {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("a.tar");
    std::fs::write(
        &tar,
        tar_with(&[
            ("top/", tar::EntryType::Directory, b""),
            ("top/smoke/run.sh", tar::EntryType::Regular, b"echo hi\n"),
        ]),
    )
    .unwrap();
    let out = dir.path().join("out");
    unpack_archive(&tar, &out, 1, 1 << 20).unwrap();
    let run = out.join("smoke/run.sh");
    assert_eq!(std::fs::read_to_string(&run).unwrap(), "echo hi\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o111,
        0o111
    );
}

/// `from: url` with a path: fetched under the host policy, decompressed, unpacked with
/// `strip-components`, the definition read from the archive (locally), refused outside
/// `image_dirs` in the lab.
#[tokio::test]
async fn from_url_archives_are_fetched_under_the_policy_and_unpacked() {
    use std::io::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let def = b"metadata: {format: Lava-Test Test Definition 1.0, name: smoke}\n\
                run: {steps: [./smoke/run.sh]}\n";
    let tar = tar_with(&[
        ("defs-1.0/", tar::EntryType::Directory, b""),
        ("defs-1.0/smoke/smoke.yaml", tar::EntryType::Regular, def),
        (
            "defs-1.0/smoke/run.sh",
            tar::EntryType::Regular,
            b"echo ok\n",
        ),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    std::fs::write(dir.path().join("defs.tar.gz"), gz.finish().unwrap()).unwrap();
    let job = jobspec::parse_job(
        "j.yaml",
        "job_name: j\ndevice_type: qemu\nactions:\n- boot: {method: qemu}\n\
         - test: {definitions: [{from: url, repository: defs.tar.gz, compression: gz, \
         strip-components: 1, path: smoke/smoke.yaml, name: smoke}]}\n",
    )
    .unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let overlay = Overlay::prepare(&job, dir.path(), &work, &HostPolicy::local())
        .await
        .unwrap();
    let run = &overlay.runs[&1][0];
    assert_eq!(run.definition.metadata.name, "smoke");
    let files = run.files.as_ref().unwrap();
    assert!(files.starts_with(&work));
    assert_eq!(
        std::fs::read_to_string(files.join("smoke/run.sh")).unwrap(),
        "echo ok\n"
    );
    // In the lab a path outside image_dirs is refused, naming the field.
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    let lab = HostPolicy::lab(&[allowed], Vec::new(), Default::default()).unwrap();
    let work = dir.path().join("work2");
    std::fs::create_dir(&work).unwrap();
    let e = Overlay::prepare(&job, dir.path(), &work, &lab)
        .await
        .unwrap_err();
    assert_eq!(e.field, "actions[1].test.definitions[0].repository", "{e}");
}

#[test]
fn archive_refuses_escapes_links_and_bombs() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (entries, want)) in [
        (
            vec![("../evil", tar::EntryType::Regular, &b"x"[..])],
            "without '..'",
        ),
        (
            vec![("/etc/evil", tar::EntryType::Regular, &b"x"[..])],
            "relative",
        ),
        (
            vec![("link", tar::EntryType::Symlink, &b""[..])],
            "links and devices are refused",
        ),
        (
            vec![("big", tar::EntryType::Regular, &[0u8; 4096][..])],
            "bytes allowed",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let tar = dir.path().join(format!("{i}.tar"));
        std::fs::write(&tar, tar_with(&entries)).unwrap();
        let e = unpack_archive(&tar, &dir.path().join(format!("out{i}")), 0, 1024).unwrap_err();
        assert!(e.contains(want), "{i}: {e}");
    }
    assert!(!dir.path().join("evil").exists());
}

#[test]
fn read_inside_refuses_escapes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.yaml"), "x").unwrap();
    assert!(read_inside(dir.path(), &dir.path().join("ok.yaml")).is_ok());
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link.yaml")).unwrap();
    assert!(read_inside(dir.path(), &dir.path().join("link.yaml")).is_err());
    assert!(read_inside(dir.path(), &dir.path().join("../../etc/passwd")).is_err());
}

#[test]
fn run_script_escapes_positional_parameters_only_in_helper_steps() {
    let definition = jobspec::parse_test_definition(
        "t.yaml",
        "metadata: {format: Lava-Test Test Definition 1.0, name: t}\n\
         run:\n  steps:\n  - lava-test-case a --shell \"echo $1 $12 $1x\"\n  - echo $1\n",
    )
    .unwrap();
    let run = TestRun {
        id: "0_t".into(),
        definition,
        params: BTreeMap::from([("P".to_string(), "it's".to_string())]),
        files: None,
        uuid: "u_0".into(),
        lava_signal: LavaSignal::Stdout,
        root: crate::overlay::OVERLAY_ROOT.to_string(),
    };
    let script = run_script(&run);
    assert!(
        script.contains("\nlava-test-case a --shell \"echo \\$1 \\$12 $1x\"\n"),
        "{script}"
    );
    assert!(script.contains("\necho $1\n"), "{script}");
    assert!(script.contains("\nP='it'\\''s'\n"), "{script}");
    assert!(
        !script.contains("export P\n"),
        "params are not exported: {script}"
    );
}

#[test]
fn kmsg_runs_write_the_runner_signals_into_the_kernel_log() {
    let definition = jobspec::parse_test_definition(
        "t.yaml",
        "metadata: {format: Lava-Test Test Definition 1.0, name: t}\n\
         install:\n  steps: ['true']\nrun:\n  steps: ['lava-test-case a --result pass']\n",
    )
    .unwrap();
    let mut run = TestRun {
        id: "0_t".into(),
        definition,
        params: BTreeMap::new(),
        files: None,
        uuid: "u_0".into(),
        lava_signal: LavaSignal::Kmsg,
        root: crate::overlay::OVERLAY_ROOT.to_string(),
    };
    let script = run_script(&run);
    let kmsg = |line: &str| {
        format!("if [ -w /dev/kmsg ]; then echo '<0>{line}' > /dev/kmsg; else echo '{line}'; fi")
    };
    let export = script.find("\nexport KMSG=true\n").expect(&script);
    let install = script
        .find("\nsh '/lava-dutlab/tests/0_t/.dutlab-install.sh'\n")
        .expect(&script);
    assert!(export < install, "KMSG reaches the install steps: {script}");
    assert!(
        script.contains(&kmsg("<LAVA_TEST_RUNNER INSTALL_FAIL>")),
        "{script}"
    );
    let start = format!(
        "\nexport KMSG=true\n{}\nset -x\n",
        kmsg("<LAVA_SIGNAL_STARTRUN 0_t u_0>")
    );
    let end = format!(
        "\nset +x\nunset KMSG\n{}\n",
        kmsg("<LAVA_SIGNAL_ENDRUN 0_t u_0>")
    );
    let (start, end) = (
        script.find(&start).expect(&script),
        script.find(&end).expect(&script),
    );
    let step = script
        .find("\nlava-test-case a --result pass\n")
        .expect(&script);
    assert!(start < step && step < end, "{script}");
    assert!(!script.contains("\necho '<LAVA_SIGNAL_"), "{script}");

    run.lava_signal = LavaSignal::Stdout;
    let script = run_script(&run);
    assert!(
        !script.contains("KMSG") && !script.contains("/dev/kmsg"),
        "{script}"
    );
    for line in [
        "echo '<LAVA_SIGNAL_STARTRUN 0_t u_0>'",
        "echo '<LAVA_SIGNAL_ENDRUN 0_t u_0>'",
        "echo '<LAVA_TEST_RUNNER INSTALL_FAIL>'",
    ] {
        assert!(script.contains(line), "{line}: {script}");
    }
}
