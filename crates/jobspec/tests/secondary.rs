//! Secondary connections (LAVA's guest roles over SSH): what a job with `connection: ssh`
//! roles, `deploy: to: ssh`, `boot: method: ssh` and `authorize: ssh` parses to, and the
//! refusals, each naming the file and field.
#![allow(clippy::unwrap_used)]

use dutlab_jobspec::{
    Action, Authorize, Connection, ProtocolRequest, StartRequest, check_secondary, is_secondary,
    parse_job,
};
use std::collections::BTreeMap;
use std::time::Duration;

const SSH_GUEST: &str = include_str!("fixtures/ssh-guest.yaml");

fn with(from: &str, to: &str) -> String {
    assert_eq!(SSH_GUEST.matches(from).count(), 1, "{from:?}");
    SSH_GUEST.replace(from, to)
}

fn refused(text: &str) -> String {
    match parse_job("guest.yaml", text) {
        Ok(job) => panic!("accepted: {job:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_host_and_its_guests_parse() {
    let job = parse_job("guest.yaml", SSH_GUEST).unwrap();
    let m = job.protocols.multinode.as_ref().unwrap();
    let visitor = &m.roles["visitor"];
    assert_eq!(visitor.device_type, "");
    assert_eq!(visitor.count, 2);
    let s = visitor.secondary.as_ref().unwrap();
    assert_eq!(s.connection, Connection::Ssh);
    assert_eq!(s.host_role, "server");
    assert_eq!(s.expect_role, "server");
    assert_eq!(s.request, Some(StartRequest::LavaStart));
    assert!(m.roles["server"].secondary.is_none());
    assert_eq!(m.roles["server"].device_type, "qemu");

    let Action::Deploy(host) = &job.actions[0] else {
        panic!()
    };
    assert_eq!(host.authorize, Some(Authorize::Ssh));
    let Action::Deploy(d) = &job.actions[1] else {
        panic!()
    };
    assert_eq!(d.to, "ssh");
    assert_eq!(d.connection, Some(Connection::Ssh));
    assert_eq!(d.delayed_start.len(), 1);
    let wait = &d.delayed_start[0];
    assert_eq!(wait.action, "prepare-scp-overlay");
    assert_eq!(wait.request, ProtocolRequest::Wait);
    assert_eq!(wait.message_id, "address");
    assert_eq!(wait.timeout, Some(Duration::from_secs(9 * 60)));
    let received = BTreeMap::from([
        ("ip".to_string(), "10.0.2.15".to_string()),
        ("kind".to_string(), "fancy".to_string()),
    ]);
    // Only `$` values are replaceable, by the received value of the same key.
    assert_eq!(
        wait.substitute(&received),
        BTreeMap::from([("ip".to_string(), "10.0.2.15".to_string())])
    );
    assert!(wait.substitute(&BTreeMap::new()).is_empty());

    let Action::Boot(b) = &job.actions[3] else {
        panic!()
    };
    assert_eq!(b.method, "ssh");
    assert_eq!(b.connection, Some(Connection::Ssh));
    let p = b.ssh.as_ref().unwrap();
    assert_eq!((p.host_id.as_str(), p.host_key.as_str()), ("address", "ip"));
    // Nothing of the secondary connection is left unread or "not honoured".
    for w in &job.warnings {
        assert!(
            !w.field.contains("protocols")
                && !w.field.contains("parameters")
                && !w.field.contains("authorize")
                && !w.field.contains("connection"),
            "{w}"
        );
    }
}

#[test]
fn a_guest_role_device_type_is_not_used() {
    let text = with(
        "        connection: ssh\n",
        "        connection: ssh\n        device_type: qemu\n",
    );
    let job = parse_job("guest.yaml", &text).unwrap();
    assert_eq!(
        job.protocols.multinode.unwrap().roles["visitor"].device_type,
        ""
    );
    assert!(
        job.warnings.iter().any(|w| w.field
            == "protocols.lava-multinode.roles.visitor.device_type"
            && w.message.contains("host role 'server'")),
        "{:?}",
        job.warnings
    );
}

#[test]
fn role_refusals_name_the_field() {
    let cases = [
        (
            with("        host_role: server\n", "        host_role: nobody\n"),
            "guest.yaml: protocols.lava-multinode.roles.visitor.host_role: unknown role 'nobody' (roles: server, visitor)",
        ),
        (
            with(
                "        host_role: server\n",
                "        host_role: visitor\n",
            ),
            "guest.yaml: protocols.lava-multinode.roles.visitor.host_role: a role cannot be its own host",
        ),
        (
            with("        host_role: server\n", ""),
            "guest.yaml: protocols.lava-multinode.roles.visitor: 'host_role' is missing",
        ),
        (
            with("        connection: ssh\n", "        connection: serial\n"),
            "guest.yaml: protocols.lava-multinode.roles.visitor.connection: 'serial' is not a connection (LAVA has only 'ssh')",
        ),
        (
            with(
                "        request: lava-start\n",
                "        request: lava-go\n",
            ),
            "guest.yaml: protocols.lava-multinode.roles.visitor.request: 'lava-go' is not a start request (use lava-start)",
        ),
        (
            with(
                "        expect_role: server\n",
                "        expect_role: boss\n",
            ),
            "guest.yaml: protocols.lava-multinode.roles.visitor.expect_role: unknown role 'boss' (roles: server, visitor)",
        ),
        (
            with("        connection: ssh\n", ""),
            "guest.yaml: protocols.lava-multinode.roles.visitor.host_role: needs 'connection: ssh' (only a secondary connection role has it)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(refused(&text), want);
    }
    // A host role that is itself a guest.
    let text = with(
        "        count: 1\n        device_type: qemu\n",
        "        count: 1\n        connection: ssh\n        host_role: visitor\n",
    );
    assert!(
        refused(&text).starts_with(
            "guest.yaml: protocols.lava-multinode.roles.server.host_role: 'visitor' is a secondary connection role itself"
        ),
        "{}",
        refused(&text)
    );
}

#[test]
fn action_refusals_name_the_field() {
    let cases = [
        (
            with(
                "      hostID: address\n      host_key: ip\n",
                "      hostID: address\n",
            ),
            "guest.yaml: actions[3].boot.parameters: 'host_key' is missing (hostID is given)",
        ),
        (
            with(
                "    parameters:\n      hostID: address\n      host_key: ip\n",
                "",
            ),
            "guest.yaml: actions[3].boot.parameters: 'hostID' and 'host_key' are missing (a secondary connection gets the host's address from its message)",
        ),
        (
            with("        messageID: address\n", ""),
            "guest.yaml: actions[1].deploy.protocols.lava-multinode[0]: 'messageID' is missing",
        ),
        (
            with("    authorize: ssh\n", "    authorize: keys\n"),
            "guest.yaml: actions[0].deploy.authorize: 'keys' is not an authorize method (LAVA has only 'ssh')",
        ),
        (
            with(
                "    role: [visitor]\n    method: ssh\n",
                "    role: [server]\n    method: ssh\n",
            ),
            "guest.yaml: actions[3].boot.role[0]: role 'server' has a device; 'method: ssh' is for secondary connection roles (connection: ssh)",
        ),
        (
            with(
                "    role: [server]\n    method: qemu\n",
                "    role: [server, visitor]\n    method: qemu\n",
            ),
            "guest.yaml: actions[2].boot.role[1]: role 'visitor' is a secondary connection; it deploys and boots only over ssh",
        ),
        (
            with(
                "    role: [server]\n    authorize: ssh\n",
                "    role: [server, visitor]\n    authorize: ssh\n",
            ),
            "guest.yaml: actions[0].deploy.role[1]: 'authorize' installs a key in a device; role 'visitor' has none (it is a secondary connection)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(refused(&text), want);
    }
}

#[test]
fn other_protocol_requests_of_a_deploy_are_not_honoured() {
    let text = with(
        "        request: lava-wait\n",
        "        request: lava-send\n",
    );
    let job = parse_job("guest.yaml", &text).unwrap();
    let Action::Deploy(d) = &job.actions[1] else {
        panic!()
    };
    assert!(d.delayed_start.is_empty());
    assert!(
        job.warnings.iter().any(|w| w.field
            == "actions[1].deploy.protocols.lava-multinode[0].request"
            && w.message.contains("only lava-wait")),
        "{:?}",
        job.warnings
    );
}

const SINGLE: &str = "job_name: over ssh\ndevice_type: ssh\nactions:\n\
- deploy: {to: ssh}\n\
- boot: {method: ssh, prompts: ['# ']}\n\
- test:\n    definitions:\n    - from: inline\n      name: t\n      path: t.yaml\n      repository:\n        metadata: {format: Lava-Test Test Definition 1.0, name: t}\n        run: {steps: [true]}\n";

#[test]
fn a_job_that_boots_over_ssh_is_checked_for_what_ssh_can_do() {
    let job = parse_job("one.yaml", SINGLE).unwrap();
    assert!(is_secondary(&job));
    check_secondary("one.yaml", &job).unwrap();
    let qemu = parse_job("one.yaml", &SINGLE.replace("method: ssh", "method: qemu")).unwrap();
    assert!(!is_secondary(&qemu));
    let tmpfs = parse_job("one.yaml", &SINGLE.replace("to: ssh", "to: tmpfs")).unwrap();
    assert_eq!(
        check_secondary("one.yaml", &tmpfs).unwrap_err().to_string(),
        "one.yaml: actions[0].deploy: a job that boots over ssh deploys only 'to: ssh' (it has no device of its own)"
    );
    let command = parse_job(
        "one.yaml",
        &SINGLE.replace(
            "- deploy: {to: ssh}\n",
            "- deploy: {to: ssh}\n- command: {name: relay}\n",
        ),
    )
    .unwrap();
    assert_eq!(
        check_secondary("one.yaml", &command).unwrap_err().field,
        "actions[1].command"
    );
}

#[test]
fn authorize_without_guests_is_not_honoured() {
    let job = parse_job(
        "one.yaml",
        &SINGLE.replace("- deploy: {to: ssh}", "- deploy: {to: ssh, authorize: ssh}"),
    )
    .unwrap();
    assert!(
        job.warnings
            .iter()
            .any(|w| w.field == "actions[0].deploy.authorize"
                && w.message.contains("no secondary connection")),
        "{:?}",
        job.warnings
    );
}
