//! The private PostgreSQL server of tests: reachable on its socket only, data kept across a
//! restart, and nothing left running once it is stopped or dropped.

use dutlab_testkit::postgres::Postgres;

#[test]
fn a_private_server_serves_its_socket_only_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let mut pg = Postgres::start()?;
    anyhow::ensure!(
        pg.psql("postgres", "SHOW listen_addresses")?.is_empty(),
        "the server listens on TCP"
    );
    let url = pg.create_database("probe")?;
    anyhow::ensure!(url.contains("host=") && url.contains("/probe?"), "{url}");
    pg.psql(
        "probe",
        "CREATE TABLE t (v BIGINT); INSERT INTO t VALUES (42)",
    )?;
    let data = pg.data_dir().display().to_string();
    anyhow::ensure!(
        !dutlab_testkit::processes_mentioning(&data).is_empty(),
        "no postmaster names {data}"
    );
    pg.stop()?;
    let left = dutlab_testkit::processes_mentioning(&data);
    anyhow::ensure!(left.is_empty(), "survived stop: {left:?}");
    // Stopping twice is harmless; the data survives a restart, even after an immediate stop.
    pg.stop()?;
    pg.start_again()?;
    pg.stop_immediately()?;
    pg.start_again()?;
    anyhow::ensure!(pg.psql("probe", "SELECT v FROM t")? == "42", "data lost");
    let dir = pg.socket_dir().to_path_buf();
    drop(pg);
    anyhow::ensure!(!dir.exists(), "{} left behind", dir.display());
    let left = dutlab_testkit::processes_mentioning(&dir.display().to_string());
    anyhow::ensure!(left.is_empty(), "left running: {left:?}");
    Ok(())
}
