use super::*;

fn rec(seq: u64, text: &str) -> LogRecord {
    LogRecord {
        seq: Seq(seq),
        at: Millis(seq),
        kind: LogKind::Console,
        text: text.into(),
    }
}

#[test]
fn stores_each_record_once_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogStore::new(dir.path());
    let job = JobId(1);
    assert_eq!(
        logs.append(job, &[rec(1, "a"), rec(2, "b")])
            .expect("append"),
        Seq(2)
    );
    // Duplicates and a frame that skips ahead are not stored.
    assert_eq!(
        logs.append(job, &[rec(2, "b"), rec(4, "d")])
            .expect("append"),
        Seq(2)
    );
    assert_eq!(
        logs.append(job, &[rec(3, "c"), rec(4, "d")])
            .expect("append"),
        Seq(4)
    );
    let all = logs.read(job, Seq(0), 100).expect("read");
    let texts: Vec<&str> = all.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["a", "b", "c", "d"]);
    assert_eq!(logs.read(job, Seq(2), 1).expect("read"), vec![rec(3, "c")]);
}

#[test]
fn a_torn_last_line_is_cut_on_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = JobId(9);
    {
        let logs = LogStore::new(dir.path());
        logs.append(job, &[rec(1, "a"), rec(2, "b")])
            .expect("append");
    }
    let path = dir.path().join("9.log");
    let mut f = OpenOptions::new().append(true).open(&path).expect("open");
    f.write_all(br#"{"seq":3,"at":3,"kind":"cons"#)
        .expect("write");
    drop(f);
    let logs = LogStore::new(dir.path());
    assert_eq!(logs.last(job).expect("last"), Seq(2));
    assert_eq!(logs.read(job, Seq(0), 10).expect("read").len(), 2);
    assert_eq!(logs.append(job, &[rec(3, "c")]).expect("append"), Seq(3));
    assert_eq!(logs.read(job, Seq(0), 10).expect("read").len(), 3);
}

#[test]
fn open_files_stay_within_the_capacity_and_evicted_logs_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogStore::with_capacity(dir.path(), 3);
    for round in 1..=4 {
        for job in 1..=10 {
            let stored = logs
                .append(JobId(job), &[rec(round, &format!("{job}.{round}"))])
                .expect("append");
            assert_eq!(stored, Seq(round));
            assert!(logs.open_files() <= 3);
        }
    }
    for job in 1..=10 {
        let texts: Vec<String> = logs
            .read(JobId(job), Seq(0), 100)
            .expect("read")
            .into_iter()
            .map(|r| r.text)
            .collect();
        assert_eq!(texts, ["1", "2", "3", "4"].map(|r| format!("{job}.{r}")));
        // Evicted files were synced before they were closed.
        assert!(logs.durable(JobId(job)).expect("durable") >= Seq(1));
    }
}

#[test]
fn records_become_durable_after_a_sync_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogStore::new(dir.path());
    let mut synced = logs.synced();
    let job = JobId(3);
    logs.append(job, &[rec(1, "a"), rec(2, "b")])
        .expect("append");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while logs.durable(job).expect("durable") < Seq(2) {
            tokio::time::timeout_at(deadline, synced.changed())
                .await
                .expect("a sync round within 10 s")
                .expect("sync thread alive");
        }
    });
    assert_eq!(logs.progress(job), Some((Seq(2), Seq(2))));
}

#[test]
fn reading_finished_logs_keeps_no_file_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogStore::new(dir.path());
    for job in 1..=20 {
        logs.append(JobId(job), &[rec(1, "a")]).expect("append");
        logs.close(JobId(job));
    }
    assert_eq!(logs.open_files(), 0);
    for job in 1..=20 {
        assert_eq!(logs.read(JobId(job), Seq(0), 10).expect("read").len(), 1);
        assert_eq!(logs.last(JobId(job)).expect("last"), Seq(1));
        drop(logs.subscribe(JobId(job)).expect("subscribe"));
    }
    assert_eq!(logs.open_files(), 0);
    assert!(lock(&logs.shared.state).jobs.is_empty());
}
