//! `boot` actions: method, prompts, `auto_login`, boot `commands`.

use super::*;
use crate::secondary;

pub(super) fn boot(cx: &mut Ctx, path: Path, v: Value) -> Result<Boot, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let method = f.req_nonempty(cx, "method")?;
    let c = common(cx, &mut f)?;
    let media = f.opt_text(cx, "media")?;
    if let Some(m) = media.as_deref()
        && m != "tmpfs"
    {
        cx.not_honoured(
            &f.at("media"),
            &format!(
                "the DUT boots what the deploy action gave (as with tmpfs); '{m}' is not used"
            ),
        );
    }
    let prompts = match f.take("prompts") {
        Some(v) => {
            let ppath = f.at("prompts");
            let prompts = text_or_list(cx, &ppath, v)?;
            if let Some(i) = prompts.iter().position(String::is_empty) {
                return Err(cx.err(&ppath.index(i), "a prompt must not be empty"));
            }
            prompts
        }
        None => Vec::new(),
    };
    let auto_login = match f.take("auto_login") {
        Some(v) => Some(auto_login(cx, f.at("auto_login"), v)?),
        None => None,
    };
    let (commands, command_list) = match f.take("commands") {
        Some(v @ Value::Seq(_)) => (None, boot_commands(cx, &f.at("commands"), v)?),
        Some(v) => (Some(text(cx, &f.at("commands"), v)?), Vec::new()),
        None => (None, Vec::new()),
    };
    if commands.is_some() || !command_list.is_empty() {
        cx.not_honoured(
            &f.at("commands"),
            "the QEMU device has no bootloader to send commands to",
        );
    }
    // `method: ssh` logs in over SSH: its `connection` and `parameters` are acted on.
    let (connection, ssh) = if method == "ssh" {
        let connection = match f.take("connection") {
            Some(v) => Some(secondary::connection(cx, &f.at("connection"), v)?),
            None => None,
        };
        let ssh = match f.take("parameters") {
            Some(v) => secondary::ssh_parameters(cx, f.at("parameters"), v)?,
            None => None,
        };
        (connection, ssh)
    } else {
        (None, None)
    };
    let connection_timeout = match f.take("connection_timeout") {
        Some(v) => Some(timeout(cx, &f.at("connection_timeout"), v)?),
        None => None,
    };
    f.ignore(
        cx,
        &[
            ("connection", "the serial console is the only connection"),
            (
                "transfer_overlay",
                "the test overlay reaches the DUT dutlab's own way, not by a download command",
            ),
            ("docker", "QEMU runs on the host, not in a container"),
            (
                "parameters",
                "kernel, bootloader and shutdown messages are not watched for",
            ),
            (
                "soft_reboot",
                "the DUT is not rebooted from its shell; a new boot action powers it off and on",
            ),
            (
                "ignore_kernel_messages",
                "kernel messages are not watched for",
            ),
            ("reset", "no reset is done before the boot"),
            ("use_bootscript", "the QEMU device has no bootloader"),
            (
                "pre_power_command",
                "no command is run before the DUT is powered on",
            ),
            ("pre_os_command", "no command is run before the OS boots"),
            ("bootloader_prompt", "the QEMU device has no bootloader"),
            (
                "type",
                "the QEMU device has no bootloader to pick a boot type",
            ),
        ],
    );
    f.finish(cx);
    Ok(Boot {
        method,
        media,
        prompts,
        auto_login,
        commands,
        command_list,
        timeout: c.timeout,
        role: c.role,
        namespace: c.namespace,
        connection_timeout,
        connection,
        ssh,
    })
}

/// Boot commands: strings, or one-key mappings of a tool to its arguments (uuu's
/// `- uuu: -b sd {boot}`, `- bcu: reset usb`), kept as `KEY: VALUE`.
pub(super) fn boot_commands(cx: &Ctx, path: &Path, v: Value) -> Result<Vec<String>, JobError> {
    let Value::Seq(items) = v else {
        return Err(cx.expected(path, "a list", &v));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let ipath = path.index(i);
            match item {
                Value::Map(m) if m.len() == 1 => {
                    let Some((k, v)) = m.into_iter().next() else {
                        return Err(cx.err(&ipath, "empty mapping"));
                    };
                    let v = text(cx, &ipath.key(&k), v)?;
                    Ok(format!("{k}: {v}"))
                }
                Value::Map(_) => Err(cx.err(
                    &ipath,
                    "a boot command is a string or a mapping with one key (tool: arguments)",
                )),
                other => text(cx, &ipath, other),
            }
        })
        .collect()
}

pub(super) fn auto_login(cx: &mut Ctx, path: Path, v: Value) -> Result<AutoLogin, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let login_prompt = f.req_nonempty(cx, "login_prompt")?;
    let username = f.req_text(cx, "username")?;
    let password_prompt = f.opt_text(cx, "password_prompt")?;
    let password = f.opt_text(cx, "password")?;
    match (&password_prompt, &password) {
        (Some(_), None) => {
            return Err(cx.err(&f.path, "'password' is missing (password_prompt is given)"));
        }
        (None, Some(_)) => {
            return Err(cx.err(&f.path, "'password_prompt' is missing (password is given)"));
        }
        _ => {}
    }
    let login_commands = match f.take("login_commands") {
        Some(v) => text_list(cx, &f.at("login_commands"), v)?,
        None => Vec::new(),
    };
    f.finish(cx);
    Ok(AutoLogin {
        login_prompt,
        username,
        password_prompt,
        password,
        login_commands,
    })
}
