//! Every flag can come from its environment variable, and means the same
//! there as on the command line.
//!
//! This file holds one test, so this test binary is one thread that may set
//! and remove environment variables: nothing else reads them meanwhile.

use std::ffi::OsString;

use clap::{ArgAction, CommandFactory, Parser};
use mission_control_server::config::Config;

/// Flags that are switches for this run only, with no variable on purpose.
const NO_ENV: &[&str] = &["dev", "help", "version"];

/// A valid value for `arg` that differs from its default, in text.
fn sample(arg: &clap::Arg) -> String {
    let long = arg.get_long().unwrap();
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return "true".into();
    }
    let default = arg
        .get_default_values()
        .first()
        .map(|d| d.to_string_lossy().into_owned());
    let possible = arg.get_possible_values();
    if let Some(other) = possible
        .iter()
        .map(|v| v.get_name().to_owned())
        .find(|v| Some(v) != default.as_ref())
    {
        return other;
    }
    match default {
        Some(d) if humantime::parse_duration(&d).is_ok() => "17s".into(),
        Some(d) if d.parse::<u64>().is_ok() => (d.parse::<u64>().unwrap() + 1).to_string(),
        // A share or factor: half of it stays within any range the flag allows.
        Some(d) if d.parse::<f64>().is_ok() => (d.parse::<f64>().unwrap() / 2.0).to_string(),
        Some(d) if d.parse::<std::net::SocketAddr>().is_ok() => "127.0.0.1:4321".into(),
        Some(d) => format!("{d}-other"),
        None if long.contains("listen") || long.contains("address") => "127.0.0.1:4321".into(),
        None if long.contains("url") => "postgres://someone@elsewhere:5432/db".into(),
        None if long.contains("interval")
            || long.contains("timeout")
            || long.contains("window") =>
        {
            "17s".into()
        }
        None if long.starts_with("max-") => "17".into(),
        None => "/sample/value".into(),
    }
}

fn parse(args: &[OsString]) -> Config {
    Config::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn every_flag_reads_its_environment_variable() {
    let command = Config::command();
    let base: Vec<OsString> = ["mission-control", "--dev"].map(Into::into).to_vec();
    let all_env: Vec<_> = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(ToOwned::to_owned))
        .collect();
    // SAFETY: the only test in this binary; no other thread reads the env.
    unsafe {
        for name in &all_env {
            std::env::remove_var(name);
        }
    }
    let defaults = format!("{:?}", parse(&base));

    let mut checked = 0;
    for arg in command.get_arguments().filter(|a| !a.is_positional()) {
        let long = arg.get_long().expect("every flag has a long name");
        if NO_ENV.contains(&long) {
            assert!(
                arg.get_env().is_none(),
                "--{long} is meant to have no variable"
            );
            continue;
        }
        let env = arg
            .get_env()
            .unwrap_or_else(|| panic!("--{long} has no environment variable"))
            .to_owned();
        let value = sample(arg);
        let mut on_command_line = base.clone();
        on_command_line.push(format!("--{long}").into());
        if !matches!(arg.get_action(), ArgAction::SetTrue) {
            on_command_line.push(value.clone().into());
        }
        let from_flag = format!("{:?}", parse(&on_command_line));
        // SAFETY: as above.
        unsafe { std::env::set_var(&env, &value) };
        let from_env = format!("{:?}", parse(&base));
        unsafe { std::env::remove_var(&env) };

        assert_ne!(
            from_flag, defaults,
            "--{long} {value}: not a sample that differs from the default"
        );
        assert_eq!(
            from_env, from_flag,
            "{env:?}={value} means --{long} {value}"
        );
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} flags seen");
}
