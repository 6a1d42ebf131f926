//! `deploy` actions: `to`, images, their sources (paths, `file://`, http(s), `downloads://`,
//! artifacts), compression and checksums.

use super::*;
use crate::secondary::{self, Authorize};

pub(super) fn deploy(cx: &mut Ctx, path: Path, v: Value) -> Result<Deploy, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let to = f.req_nonempty(cx, "to")?;
    // Taken before `common`, which ignores the `protocols` of other actions.
    let delayed_start = match f.take("protocols") {
        Some(v) => secondary::deploy_protocols(cx, f.at("protocols"), v)?,
        None => Vec::new(),
    };
    let c = common(cx, &mut f)?;
    let connection = match f.take("connection") {
        Some(v) => Some(secondary::connection(cx, &f.at("connection"), v)?),
        None => None,
    };
    let authorize = match f.take("authorize") {
        Some(v) => {
            let apath = f.at("authorize");
            match text(cx, &apath, v)?.as_str() {
                "ssh" => Some(Authorize::Ssh),
                other => {
                    return Err(cx.err(
                        &apath,
                        format!("'{other}' is not an authorize method (LAVA has only 'ssh')"),
                    ));
                }
            }
        }
        None => None,
    };
    let os = f.opt_text(cx, "os")?;
    if os.is_some() {
        cx.not_honoured(
            &f.at("os"),
            "the test overlay and helpers are the same for every OS",
        );
    }
    let mut images = BTreeMap::new();
    if let Some(v) = f.take("images") {
        let ipath = f.at("images");
        let Value::Map(map) = v else {
            return Err(cx.expected(&ipath, "a mapping of image names to images", &v));
        };
        for (name, v) in map {
            let img = image(cx, ipath.key(&name), &name, v)?;
            images.insert(name, img);
        }
    }
    f.ignore(
        cx,
        &[
            ("overlay_backend", "nothing is written into images"),
            ("type", "deploy types (such as monitor) are not used"),
            ("postprocess", "images are not post-processed"),
            ("uefi", "no UEFI firmware is given to QEMU"),
        ],
    );
    // Deploy methods such as tftp give images at the action level: `kernel: {url: ...}`.
    let inline_images: Vec<String> = f
        .keys()
        .filter(|k| !["to", "images", "os", "connection", "authorize"].contains(&k.as_str()))
        .cloned()
        .collect();
    for name in inline_images {
        let ipath = f.at(&name);
        match f.take(&name) {
            Some(Value::Map(m)) if m.contains_key("url") => {
                if images.contains_key(&name) {
                    return Err(cx.err(
                        &ipath,
                        format!("image '{name}' is given twice (here and in 'images')"),
                    ));
                }
                let img = image(cx, ipath, &name, Value::Map(m))?;
                images.insert(name, img);
            }
            Some(_) => cx.warn(&ipath, "unknown key, ignored"),
            None => {}
        }
    }
    f.finish(cx);
    Ok(Deploy {
        to,
        images,
        os,
        connection,
        authorize,
        delayed_start,
        timeout: c.timeout,
        role: c.role,
        namespace: c.namespace,
    })
}

pub(super) fn image(cx: &mut Ctx, path: Path, name: &str, v: Value) -> Result<Image, JobError> {
    let mut f = Fields::new(cx, path, v)?;
    let url_path = f.at("url");
    let url = f.req_nonempty(cx, "url")?;
    let source = image_source(cx, &url_path, &url)?;
    let compression = match f.take("compression") {
        Some(v) => compression(cx, &f.at("compression"), v)?,
        None => Compression::None,
    };
    let format = f.opt_text(cx, "format")?;
    let image_arg = f.opt_text(cx, "image_arg")?;
    let sha_path = f.at("sha256sum");
    let sha256sum = f
        .opt_text(cx, "sha256sum")?
        .map(|s| sha256(cx, &sha_path, &s))
        .transpose()?;
    let kind = f.opt_text(cx, "type")?;
    if kind.is_some() {
        cx.not_honoured(
            &f.at("type"),
            "the image type is not used; QEMU loads the image as it is",
        );
    }
    let role = image_role(name);
    if format.is_some() && role != ImageRole::Disk {
        cx.not_honoured(
            &f.at("format"),
            &format!("only disk images use 'format'; '{name}' is not a disk"),
        );
    }
    if role == ImageRole::Unused && image_arg.is_none() {
        cx.not_honoured(
            &f.path,
            &format!(
                "the QEMU device does not give a '{name}' image to the guest (it is fetched \
                 and checked only); add 'image_arg' to pass it to QEMU"
            ),
        );
    }
    f.ignore(
        cx,
        &[
            ("md5sum", "md5sum is not checked; use sha256sum"),
            ("sha512sum", "sha512sum is not checked; use sha256sum"),
            ("headers", "downloads send no extra HTTP headers"),
            (
                "archive",
                "archives are not unpacked; the file is used as it is",
            ),
            ("use_cache", "downloads are not cached yet"),
            (
                "overlays",
                "nothing is added into images; the test overlay reaches the DUT on its own",
            ),
            ("partition", "images are used whole; no partition is picked"),
            (
                "sparse",
                "images are used as they are (no sparse conversion)",
            ),
            ("overlay_backend", "nothing is written into images"),
            (
                "root_partition",
                "images are used whole; no partition is picked",
            ),
            ("apply-overlay", "nothing is written into images"),
        ],
    );
    f.finish(cx);
    Ok(Image {
        source,
        compression,
        format,
        image_arg,
        sha256sum,
        kind,
    })
}

/// `scheme` of `scheme://...`, if `s` starts with a URL scheme.
pub(super) fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

pub(crate) fn image_source(cx: &Ctx, path: &Path, url: &str) -> Result<ImageSource, JobError> {
    if url.starts_with("artifact:") {
        return artifact(cx, path, url).map(|hex| ImageSource::Artifact(hex.to_owned()));
    }
    let Some(scheme) = url_scheme(url) else {
        return Ok(ImageSource::Path(url.to_owned()));
    };
    let rest = &url[scheme.len() + 3..];
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if host.is_empty() {
                return Err(cx.err(path, format!("URL '{url}' has no host")));
            }
            Ok(ImageSource::Http(url.to_owned()))
        }
        "file" => {
            let rest = rest.strip_prefix("localhost").unwrap_or(rest);
            if !rest.starts_with('/') {
                return Err(cx.err(
                    path,
                    format!("file URL '{url}' must hold an absolute path (file:///path)"),
                ));
            }
            percent_decode(rest)
                .map(ImageSource::Path)
                .ok_or_else(|| cx.err(path, format!("file URL '{url}' has a bad %-escape")))
        }
        "downloads" => downloads_name(rest)
            .map(ImageSource::Downloads)
            .ok_or_else(|| {
                cx.err(
                    path,
                    format!(
                        "'{url}' must name a file as a relative path without '.', '..' or \
                         empty components (downloads://NAME)"
                    ),
                )
            }),
        other => Ok(ImageSource::Other {
            scheme: other.to_owned(),
            url: url.to_owned(),
        }),
    }
}

/// The digest of an `artifact:` reference, or an error naming the field.
pub(super) fn artifact<'a>(cx: &Ctx, path: &Path, text: &'a str) -> Result<&'a str, JobError> {
    crate::references::artifact_digest(text).ok_or_else(|| {
        cx.err(
            path,
            format!(
                "'{text}' is not an artifact reference (artifact:sha256: and 64 lowercase \
                 hexadecimal digits)"
            ),
        )
    })
}

/// The file name of `downloads://REST` (LAVA joins host and path: `downloads://a/b`,
/// `downloads:///a/b` both name `a/b`), if it is a clean relative path.
pub(super) fn downloads_name(rest: &str) -> Option<String> {
    let name = rest.trim_start_matches('/');
    let clean = !name.is_empty()
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'))
        && !name.contains(['\0', '?', '#']);
    clean.then(|| name.to_owned())
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

pub(crate) fn compression(cx: &Ctx, path: &Path, v: Value) -> Result<Compression, JobError> {
    let s = text(cx, path, v)?;
    match s.to_ascii_lowercase().as_str() {
        "gz" | "gzip" => Ok(Compression::Gz),
        "xz" => Ok(Compression::Xz),
        "bz2" | "bzip2" => Ok(Compression::Bz2),
        "zstd" | "zst" => Ok(Compression::Zstd),
        "zip" => Ok(Compression::Zip),
        _ => Err(cx.err(
            path,
            format!("unsupported compression '{s}' (use gz, xz, bz2, zstd or zip)"),
        )),
    }
}

pub(super) fn sha256(cx: &Ctx, path: &Path, s: &str) -> Result<String, JobError> {
    let t = s.trim();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t.to_ascii_lowercase())
    } else {
        Err(cx.err(
            path,
            format!("'{s}' is not a sha256sum (64 hexadecimal digits)"),
        ))
    }
}
