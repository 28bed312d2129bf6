//! What every command is given: the service's endpoints, an operator
//! client, and how to print (a table for people, JSON for scripts).

use clap::ValueEnum;
use mission_control_client::Endpoints;
use mission_control_client::operator::OperatorClient;
use serde_json::Value;

use crate::stdout;

/// How results are printed (`--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// What every command needs: where the service is and how to print.
pub struct Context {
    pub endpoints: Endpoints,
    pub operator: OperatorClient,
    pub output: Output,
    /// For commands that open connections of their own (`bench`).
    pub tls: mission_control_client::ClientTls,
    pub operator_token: Option<String>,
}

impl Context {
    pub fn print(&self, json: impl FnOnce() -> Value, text: impl FnOnce() -> String) {
        let _ = match self.output {
            // A closed stdout is the reader's choice, not an error.
            Output::Json => stdout::emit_line(&json().to_string()),
            Output::Table => stdout::emit(&text()),
        };
    }
}
