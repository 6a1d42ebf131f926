//! `jobspec::multinode::instances` and the runnable checks of multinode jobs.

use dutlab_jobspec::multinode::instances;
use dutlab_jobspec::{Action, check_runnable, parse_job};

const MULTINODE: &str = include_str!("fixtures/multinode.yaml");

#[test]
fn a_group_expands_into_role_instances_in_roster_order() {
    let job = parse_job("multinode.yaml", MULTINODE).expect("valid");
    let all = instances(&job);
    let seen: Vec<(&str, u32)> = all.iter().map(|i| (i.role.as_str(), i.index)).collect();
    // Roles in name order, then the instances of each role.
    assert_eq!(seen, [("client", 0), ("client", 1), ("server", 2)]);
    let client = &all[0];
    assert_eq!(client.device_type, "qemu");
    assert_eq!(client.job.device_type, "qemu");
    assert!(client.tags.is_empty());
    // deploy, boot and the client's own test.
    assert_eq!(client.job.actions.len(), 3);
    assert!(matches!(client.job.actions[2], Action::Test(_)));
    let server = &all[2];
    assert_eq!(server.tags, ["big"]);
    assert_eq!(server.job.tags, ["big"]);
    assert_eq!(server.job.actions.len(), 2);
    assert_eq!(server.job.context.arch.as_deref(), Some("amd64"));
    assert_eq!(server.job.context.extra_options, ["-m", "512"]);
    // Still a multinode job: its calls are allowed, and it checks as runnable.
    assert!(server.job.protocols.multinode.is_some());
    check_runnable("server.yaml", &server.job).expect("an instance is runnable");
}

#[test]
fn a_job_without_multinode_has_no_instances() {
    let job = parse_job(
        "one.yaml",
        "job_name: one\ndevice_type: qemu\nactions:\n- boot: {method: qemu, prompts: ['# ']}\n",
    )
    .expect("valid");
    assert!(instances(&job).is_empty());
}

#[test]
fn multinode_runs_locally_and_in_the_lab() {
    let job = parse_job("multinode.yaml", MULTINODE).expect("valid");
    check_runnable("multinode.yaml", &job).expect("runnable locally");
    check_runnable("multinode.yaml", &job).expect("the lab schedules it as a group");
}

#[test]
fn each_role_is_checked_as_one_device() {
    // The server's test comes before any boot of the server: the client's boot does not count.
    let text = "job_name: mn\nprotocols:\n  lava-multinode:\n    roles:\n      \
                server: {device_type: qemu, count: 1}\n      client: {device_type: qemu, count: 1}\n\
                actions:\n- boot: {method: qemu, role: [client], prompts: ['# ']}\n\
                - test:\n    role: [server]\n    definitions:\n    - {from: inline, name: t, path: t.yaml, \
                repository: {metadata: {format: Lava-Test Test Definition 1.0, name: t}, run: {steps: [true]}}}\n";
    let job = parse_job("mn.yaml", text).expect("valid LAVA");
    let e = check_runnable("mn.yaml", &job).expect_err("refused");
    assert_eq!(e.field, "actions[1].test");
    assert!(e.reason.contains("no boot action"), "{}", e.reason);
}

const SECONDARY: &str = "job_name: sec\nprotocols:\n  lava-multinode:\n    roles:\n      \
    host: {device_type: qemu, count: 1}\n      \
    guest: {count: 1, connection: ssh, host_role: host, request: lava-start}\n\
    actions:\n- boot: {method: qemu, role: [host], prompts: ['# ']}\n\
    - deploy: {role: [guest], to: ssh, connection: ssh}\n\
    - boot: {role: [guest], method: ssh, connection: ssh, prompts: ['# '], parameters: {hostID: ipv4, host_key: ipaddr}}\n";

#[test]
fn a_secondary_role_is_checked_as_an_ssh_connection_and_rides_on_its_host() {
    let job = parse_job("sec.yaml", SECONDARY).expect("valid");
    check_runnable("sec.yaml", &job).expect("runnable locally and in the lab");
    // The guest names its host, the host instance, and takes the host's device type.
    let instances = dutlab_jobspec::multinode::instances(&job);
    let roles: Vec<(&str, Option<u32>, &str)> = instances
        .iter()
        .map(|i| (i.role.as_str(), i.host, i.device_type.as_str()))
        .collect();
    assert_eq!(roles, [("guest", Some(1), "qemu"), ("host", None, "qemu")]);
    assert_eq!(instances[1].guests(&instances), 1);
    assert_eq!(instances[0].guests(&instances), 0);
    // A guest's test needs its own boot (over ssh) before it; the host's boot does not count.
    let bad = SECONDARY.replace(
        "- deploy: {role: [guest]",
        "- test:\n    role: [guest]\n    definitions:\n    - {from: inline, name: t, path: t.yaml, \
         repository: {metadata: {format: Lava-Test Test Definition 1.0, name: t}, run: {steps: [true]}}}\n\
         - deploy: {role: [guest]",
    );
    let job = parse_job("sec.yaml", &bad).expect("valid LAVA");
    let e = check_runnable("sec.yaml", &job).expect_err("refused");
    assert_eq!(e.field, "actions[1].test");
    assert!(e.reason.contains("boot"), "{}", e.reason);
}
