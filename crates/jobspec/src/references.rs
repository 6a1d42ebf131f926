//! Artifact references: `artifact:sha256:<hex>` in an image's `url` or a git definition's
//! `repository`, and the rewrite that puts them in place of local paths.
//!
//! `dutlab job submit` uploads the local files a job names and submits the job with
//! references to them; the controller checks that each referenced artifact exists and may be
//! used by the submitter; the agent fetches each into its cache and admits the verified file
//! into the job's host policy, which the runner asks for the file of each reference.
//!
//! Invariants:
//! - A reference is exactly `artifact:sha256:` and 64 lowercase hexadecimal digits; anything
//!   else starting with `artifact:` is refused by the parser (field named).
//! - [`rewrite_references`] changes only the `url` of images and the `repository` of
//!   `from: git` definitions whose text is a key of the map; every other value is kept. Its
//!   output is JSON (a YAML subset), which [`crate::parse_job`] reads like the original.

use crate::actions::{Action, DefinitionSource, ImageSource};
use crate::fields::Path;
use crate::job::Job;
use crate::yaml::{self, Value};
use crate::{JobError, fields::Ctx};
use std::collections::BTreeMap;

/// What every artifact reference starts with.
pub const ARTIFACT_PREFIX: &str = "artifact:sha256:";

/// The digest of a well-formed reference (`artifact:sha256:<64 lowercase hex>`).
pub fn artifact_digest(text: &str) -> Option<&str> {
    let hex = text.strip_prefix(ARTIFACT_PREFIX)?;
    is_digest(hex).then_some(hex)
}

/// True for 64 lowercase hexadecimal digits (a sha256 as the artifact store names it).
pub fn is_digest(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The reference of a digest.
pub fn artifact_reference(digest: &str) -> String {
    format!("{ARTIFACT_PREFIX}{digest}")
}

/// One place of a job that names an artifact or a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `actions[0].deploy.images.kernel.url`, `actions[2].test.definitions[0].repository`.
    pub field: String,
    pub kind: ReferenceKind,
    /// The text as written (for paths: as written, `file://` decoded).
    pub text: String,
}

/// What a reference is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    /// An image file.
    Image,
    /// A git repository (an artifact is a git bundle).
    GitRepository,
}

impl Job {
    /// Whether the job deploys images of its own (a deploy other than `to: downloads`);
    /// otherwise it boots the device's default image.
    pub fn deploys_images(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::Deploy(d) if !d.only_downloads()))
    }

    /// Every artifact reference of the job (images and git repositories), in job order.
    pub fn artifact_references(&self) -> Vec<Reference> {
        self.references()
            .into_iter()
            .filter(|r| artifact_digest(&r.text).is_some())
            .collect()
    }

    /// Every image path and git repository the job names, in job order.
    pub fn references(&self) -> Vec<Reference> {
        let mut out = Vec::new();
        for (i, action) in self.actions.iter().enumerate() {
            match action {
                Action::Deploy(d) => {
                    for (name, image) in &d.images {
                        let text = match &image.source {
                            ImageSource::Path(p) => p.clone(),
                            ImageSource::Http(u) => u.clone(),
                            ImageSource::Artifact(hex) => artifact_reference(hex),
                            // Files of an earlier deploy and other schemes name nothing local.
                            ImageSource::Downloads(_) | ImageSource::Other { .. } => continue,
                        };
                        out.push(Reference {
                            field: format!("actions[{i}].deploy.images.{name}.url"),
                            kind: ReferenceKind::Image,
                            text,
                        });
                    }
                }
                Action::Test(t) => {
                    for (j, def) in t.definitions.iter().enumerate() {
                        if let DefinitionSource::Git { repository, .. } = &def.source {
                            out.push(Reference {
                                field: format!("actions[{i}].test.definitions[{j}].repository"),
                                kind: ReferenceKind::GitRepository,
                                text: repository.clone(),
                            });
                        }
                    }
                }
                Action::Boot(_) | Action::Command(_) => {}
            }
        }
        out
    }
}

/// The job text with each image `url` and git `repository` found in `map` replaced by its
/// value (a path written as `file://` is looked up by its decoded path). The answer is JSON.
pub fn rewrite_references(
    file: &str,
    text: &str,
    map: &BTreeMap<String, String>,
) -> Result<String, JobError> {
    let mut value = yaml::load(file, text)?.value;
    let cx = Ctx::new(file);
    let lookup = |s: &str| -> Option<String> {
        if let Some(v) = map.get(s) {
            return Some(v.clone());
        }
        let path = s.strip_prefix("file://")?;
        let path = path.strip_prefix("localhost").unwrap_or(path);
        map.get(&crate::actions::deploy::percent_decode(path)?)
            .cloned()
    };
    let Value::Map(top) = &mut value else {
        return Err(cx.err(&Path::root(), "the job is not a mapping"));
    };
    if let Some(Value::Seq(actions)) = top.get_mut("actions") {
        for action in actions {
            let Value::Map(action) = action else { continue };
            if let Some(Value::Map(deploy)) = action.get_mut("deploy") {
                for (key, entry) in deploy.iter_mut() {
                    let image_maps: Vec<&mut Value> = if key == "images" {
                        match entry {
                            Value::Map(images) => images.values_mut().collect(),
                            _ => Vec::new(),
                        }
                    } else {
                        vec![entry]
                    };
                    for image in image_maps {
                        if let Value::Map(image) = image
                            && let Some(Value::Str(url)) = image.get_mut("url")
                            && let Some(new) = lookup(url)
                        {
                            *url = new;
                        }
                    }
                }
            }
            if let Some(Value::Map(test)) = action.get_mut("test")
                && let Some(Value::Seq(defs)) = test.get_mut("definitions")
            {
                for def in defs {
                    if let Value::Map(def) = def
                        && matches!(def.get("from"), Some(Value::Str(f)) if f == "git")
                        && let Some(Value::Str(repo)) = def.get_mut("repository")
                        && let Some(new) = lookup(repo)
                    {
                        *repo = new;
                    }
                }
            }
        }
    }
    let mut out = String::with_capacity(text.len() * 2);
    json(&value, 0, &mut out);
    out.push('\n');
    Ok(out)
}

/// Writes `v` as indented JSON.
fn json(v: &Value, indent: usize, out: &mut String) {
    let pad = |n: usize, out: &mut String| out.extend(std::iter::repeat_n(' ', n));
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::Float(f) => out.push_str(&yaml::float_text(*f)),
        Value::Str(s) => json_string(s, out),
        Value::Seq(items) if items.is_empty() => out.push_str("[]"),
        Value::Map(m) if m.is_empty() => out.push_str("{}"),
        Value::Seq(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                pad(indent + 2, out);
                json(item, indent + 2, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(indent, out);
            out.push(']');
        }
        Value::Map(m) => {
            out.push_str("{\n");
            for (i, (k, item)) in m.iter().enumerate() {
                pad(indent + 2, out);
                json_string(k, out);
                out.push_str(": ");
                json(item, indent + 2, out);
                out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
            }
            pad(indent, out);
            out.push('}');
        }
    }
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20
                || c == '\u{7f}'
                || c == '\u{85}'
                || c == '\u{2028}'
                || c == '\u{2029}' =>
            {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "\
job_name: refs # a comment
device_type: qemu
timeouts: {job: {minutes: 5}}
actions:
- deploy:
    to: tmpfs
    images:
      kernel: {url: ./vmlinuz}
      initrd: {url: 'file:///srv/my%20initrd', compression: gz}
      rootfs: {url: 'https://example.org/disk.img'}
- boot: {method: qemu, prompts: ['# ']}
- test:
    definitions:
    - {from: git, repository: ../tests, path: smoke.yaml, name: smoke}
    - {from: git, repository: 'https://example.org/t.git', path: a.yaml, name: a}
";

    #[test]
    fn local_references_are_replaced_and_everything_else_is_kept() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let c = "c".repeat(64);
        let map: BTreeMap<String, String> = [
            ("./vmlinuz".to_owned(), artifact_reference(&a)),
            ("/srv/my initrd".to_owned(), artifact_reference(&b)),
            ("../tests".to_owned(), artifact_reference(&c)),
        ]
        .into();
        let text = rewrite_references("job.yaml", JOB, &map).expect("rewritten");
        let before = crate::parse_job("job.yaml", JOB).expect("valid");
        let after = crate::parse_job("job.yaml", &text).expect("the rewrite parses");
        let texts: Vec<String> = after.references().into_iter().map(|r| r.text).collect();
        assert_eq!(
            texts,
            [
                artifact_reference(&b),
                artifact_reference(&a),
                "https://example.org/disk.img".to_owned(),
                artifact_reference(&c),
                "https://example.org/t.git".to_owned(),
            ]
        );
        let digests: Vec<String> = after
            .artifact_references()
            .into_iter()
            .map(|r| r.field)
            .collect();
        assert_eq!(
            digests,
            [
                "actions[0].deploy.images.initrd.url",
                "actions[0].deploy.images.kernel.url",
                "actions[2].test.definitions[0].repository",
            ]
        );
        assert_eq!(after.name, before.name);
        assert_eq!(after.timeouts, before.timeouts);
        assert_eq!(after.actions.len(), before.actions.len());
        assert_eq!(after.warnings, before.warnings);
    }

    #[test]
    fn malformed_references_are_refused_naming_the_field() {
        let bad = JOB.replace("./vmlinuz", "artifact:sha256:ABC");
        let e = crate::parse_job("job.yaml", &bad).expect_err("refused");
        assert!(
            e.to_string()
                .contains("actions[0].deploy.images.kernel.url"),
            "{e}"
        );
        let bad = JOB.replace("../tests", "artifact:md5:00");
        let e = crate::parse_job("job.yaml", &bad).expect_err("refused");
        assert!(e.to_string().contains("definitions[0].repository"), "{e}");
    }

    #[test]
    fn strings_survive_the_json_form() {
        let mut out = String::new();
        json(&Value::Str("a\"b\\c\nd\u{1}é: #x".into()), 0, &mut out);
        let back = yaml::load("x", &out).expect("parses").value;
        assert_eq!(back, Value::Str("a\"b\\c\nd\u{1}é: #x".into()));
    }
}
