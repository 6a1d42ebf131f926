//! Job and test-definition YAML: parse, validate, normalise (LAVA-compatible).
//!
//! [`parse_job`] reads a LAVA job file as LAVA users write it (plus short forms such as
//! `timeout: 5m`) into a [`Job`]; [`parse_test_definition`] reads a LAVA test definition into
//! a [`TestDefinition`]. Both are pure: they take the text and a file name for messages, and
//! do no I/O and read no clock.
//!
//! Invariants:
//! - Every refusal is a [`JobError`] naming the file and the field (`actions[2].test.definitions[0]`)
//!   or the YAML location (`line 3 column 5`); no input makes these functions panic.
//! - Hostile input is refused quickly in bounded memory: input over [`MAX_DOCUMENT_BYTES`] is
//!   refused unparsed, and nesting depth, node count, aliases and expanded text are capped
//!   ([`MAX_DEPTH`], [`MAX_NODES`], [`MAX_EXPANDED_BYTES`]).
//! - A duplicate mapping key keeps its last value (as LAVA's loader does) with a [`Warning`]
//!   naming both lines; unknown keys are [`Warning`]s, never errors.
//! - Every key LAVA defines that dutlab accepts but does not act on is a [`Warning`] whose
//!   message starts with [`NOT_HONOURED`] and gives the reason; a key dutlab acts on never is.
//! - Parsing does not ask whether a device can run the job: [`check_runnable`] does, against
//!   the one table of device types ([`DEVICE_TYPES`]).
//! - Parsed values are normalised: durations are [`std::time::Duration`], priorities numbers,
//!   sha256 sums lowercase, `file://` URLs paths, scalars in string fields stringified.

mod actions;
mod devices;
mod duration;
mod error;
mod fields;
mod interactive;
mod job;
pub mod multinode;
mod references;
mod secondary;
mod testdef;
mod yaml;

pub use actions::{
    Action, AutoLogin, Boot, Command, Compression, DefinitionRef, DefinitionSource, Deploy, Image,
    ImageRole, ImageSource, LavaSignal, Test, image_role,
};
pub use devices::{DEVICE_TYPES, DeviceType, check_runnable};
pub use duration::parse_duration;
pub use error::{JobError, Warning};
pub use fields::NOT_HONOURED;
pub use interactive::{
    AfterMatch, CommandStep, Echo, FailurePattern, InteractiveScript, LavaException, MAX_COMMAND,
    Monitor, ScriptStep, console_pattern,
};
pub use job::{
    Context, DEFAULT_ACTION_TIMEOUT, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_JOB_TIMEOUT,
    DEFAULT_PRIORITY, Job, Multinode, Protocols, Role, TIMED_ACTIONS, Timeouts, Visibility,
};
pub use references::{
    ARTIFACT_PREFIX, Reference, ReferenceKind, artifact_digest, artifact_reference, is_digest,
    rewrite_references,
};
pub use secondary::{
    Authorize, Connection, DelayedStart, ProtocolRequest, SecondaryRole, SshParameters,
    StartRequest, check_secondary, check_secondary_actions, is_secondary,
};
pub use testdef::{DefinitionMetadata, ParsePattern, TEST_DEFINITION_FORMAT, TestDefinition};
pub use yaml::{MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_DUPLICATES, MAX_EXPANDED_BYTES, MAX_NODES};

use fields::{Ctx, Path};

/// Parses and validates a LAVA job file. `file` is only used in messages.
pub fn parse_job(file: &str, text: &str) -> Result<Job, JobError> {
    let loaded = yaml::load(file, text)?;
    let mut cx = Ctx::new(file);
    cx.warnings = yaml::duplicate_warnings(&loaded);
    job::parse(&mut cx, loaded.value)
}

/// Parses and validates a LAVA test definition. `file` is only used in messages.
pub fn parse_test_definition(file: &str, text: &str) -> Result<TestDefinition, JobError> {
    let loaded = yaml::load(file, text)?;
    let mut cx = Ctx::new(file);
    let duplicates = yaml::duplicate_warnings(&loaded);
    let value = loaded.value;
    if value == yaml::Value::Null {
        return Err(cx.err(&Path::root(), "the document is empty"));
    }
    let mut def = testdef::parse(&mut cx, Path::root(), value)?;
    def.warnings.splice(0..0, duplicates);
    Ok(def)
}
