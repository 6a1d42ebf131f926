//! `test` actions: definitions (inline, git, url), `interactive`, `monitors`.

use super::*;
use deploy::{artifact, compression, image_source};

pub(super) fn test(cx: &mut Ctx, path: Path, v: Value) -> Result<Test, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let c = common(cx, &mut f)?;
    // LAVA picks the schema by the first of these keys; each schema refuses the others.
    let forms: Vec<&str> = ["definitions", "interactive", "monitors"]
        .into_iter()
        .filter(|k| f.has(k))
        .collect();
    if forms.len() > 1 {
        return Err(cx.err(
            &f.path,
            format!(
                "a test action has one of 'definitions', 'interactive' or 'monitors'; this \
                 one has {}",
                forms.join(" and ")
            ),
        ));
    }
    let has_other_form = !forms.is_empty() || f.has("services");
    let interactive = match f.take("interactive") {
        Some(v) => interactive::scripts(cx, &f.at("interactive"), v)?,
        None => Vec::new(),
    };
    let monitors = match f.take("monitors") {
        Some(v) => interactive::monitors(cx, &f.at("monitors"), v)?,
        None => Vec::new(),
    };
    let definitions = match f.take("definitions") {
        Some(v) => {
            let dpath = f.at("definitions");
            let Value::Seq(items) = v else {
                return Err(cx.expected(&dpath, "a list of test definitions", &v));
            };
            if items.is_empty() {
                return Err(cx.err(&dpath, "the list of test definitions is empty"));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| definition_ref(cx, dpath.index(i), item))
                .collect::<Result<Vec<_>, _>>()?
        }
        None if has_other_form => Vec::new(),
        None => {
            return Err(cx.err(
                &f.path,
                "a test action needs 'definitions' (or 'monitors' or 'interactive')",
            ));
        }
    };
    f.ignore(
        cx,
        &[
            (
                "docker",
                "definitions run in the DUT's shell, not in a container",
            ),
            ("services", "service containers are not started"),
        ],
    );
    f.finish(cx);
    Ok(Test {
        definitions,
        interactive,
        monitors,
        timeout: c.timeout,
        role: c.role,
        namespace: c.namespace,
    })
}

pub(super) fn valid_definition_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn definition_ref(
    cx: &mut Ctx,
    path: Path,
    v: Value,
) -> Result<DefinitionRef, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let name = f.req_text(cx, "name")?;
    if !valid_definition_name(&name) {
        return Err(cx.err(
            &f.at("name"),
            format!("'{name}' is not a valid name (use letters, digits, '-', '_' and '.')"),
        ));
    }
    let def_path = f.req_nonempty(cx, "path")?;
    let from_path = f.at("from");
    let from = f.req_text(cx, "from")?;
    let repo_path = f.at("repository");
    let repository = f.req(cx, "repository")?;
    let source = match from.as_str() {
        "git" => {
            let repository = text(cx, &repo_path, repository)?;
            if repository.trim().is_empty() {
                return Err(cx.err(&repo_path, "must not be empty"));
            }
            if repository.starts_with("artifact:") {
                artifact(cx, &repo_path, &repository)?;
            }
            let revision = f.opt_text(cx, "revision")?;
            let branch = f.opt_text(cx, "branch")?;
            let history = match f.take("history") {
                Some(v) => boolean(cx, &f.at("history"), v)?,
                None => true,
            };
            f.ignore(cx, &[("recursive", "submodules are not cloned")]);
            DefinitionSource::Git {
                repository,
                revision,
                branch,
                history,
            }
        }
        "url" => {
            let url = text(cx, &repo_path, repository)?;
            if url.trim().is_empty() {
                return Err(cx.err(&repo_path, "must not be empty"));
            }
            let source = image_source(cx, &repo_path, url.trim())?;
            if matches!(source, ImageSource::Downloads(_)) {
                return Err(cx.err(
                    &repo_path,
                    "downloads:// URLs name images of a deploy action, not test definitions",
                ));
            }
            let compression = match f.take("compression") {
                Some(v) => compression(cx, &f.at("compression"), v)?,
                None => Compression::None,
            };
            let strip_components = match f.take("strip-components") {
                Some(Value::Int(n)) => {
                    u32::try_from(n).ok().filter(|n| *n <= 64).ok_or_else(|| {
                        cx.err(
                            &f.at("strip-components"),
                            format!("{n} is out of range (0 to 64)"),
                        )
                    })?
                }
                Some(other) => {
                    return Err(cx.expected(&f.at("strip-components"), "an integer", &other));
                }
                None => 0,
            };
            DefinitionSource::Url {
                source,
                compression,
                strip_components,
            }
        }
        "inline" => match repository {
            v @ Value::Map(_) => DefinitionSource::Inline(testdef::parse(cx, repo_path, v)?),
            other => {
                return Err(cx.expected(
                    &repo_path,
                    "a mapping (an inline test definition)",
                    &other,
                ));
            }
        },
        other => {
            return Err(cx.err(
                &from_path,
                format!("unsupported source '{other}' (use inline, git or url)"),
            ));
        }
    };
    let params = testdef::params(cx, &mut f)?;
    let signal_path = f.at("lava-signal");
    let lava_signal = match f.opt_text(cx, "lava-signal")?.as_deref() {
        None | Some("stdout") => LavaSignal::Stdout,
        Some("kmsg") => LavaSignal::Kmsg,
        Some(other) => {
            return Err(cx.err(
                &signal_path,
                format!("'{other}' is not a signal channel (use kmsg or stdout)"),
            ));
        }
    };
    f.ignore(
        cx,
        &[
            ("skip_install", "install steps always run"),
            (
                "expected",
                "test cases that never reported are not listed as missing",
            ),
            ("headers", "downloads send no extra HTTP headers"),
            ("compression", "only a 'from: url' archive is decompressed"),
            (
                "strip-components",
                "the archive is unpacked as it is; 'path' is read from its top",
            ),
        ],
    );
    f.finish(cx);
    Ok(DefinitionRef {
        name,
        path: def_path,
        source,
        params,
        lava_signal,
    })
}
