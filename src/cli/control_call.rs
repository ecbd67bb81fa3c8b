//! `pilotctl`'s side of the control socket: one request, its answer as JSON or as the type it
//! decodes to, and JSON printed as the verbs print it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::api::{self, ClientError, Request};

/// How long a verb waits for the daemon's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `request` to the daemon at `socket` and returns its answer.
pub(super) fn call(socket: &Path, request: &Request) -> Result<Value, ClientError> {
    api::request(socket, request, REQUEST_TIMEOUT)
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ClientError> {
    serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// Prints `value` as the verbs' `--json` output is printed.
pub(super) fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).expect("json"));
}
