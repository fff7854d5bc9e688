//! `ft eval` and `ft serve` end to end through the binary: the gate's exit code, the report
//! files, refusals of bad options, and a live server answering over HTTP.

mod common;
use common::{ft, repo};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

#[test]
fn eval_gate_sets_the_exit_code_and_writes_the_report() -> Result<()> {
    if ft::core::testing::default_gguf().is_none() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("test.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(repo().join("datasets/support/test.jsonl"))?
        .lines()
        .take(2)
        .map(str::to_string)
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n")?;
    let report = dir.path().join("report");
    let data_arg = data.display().to_string();
    let report_arg = report.display().to_string();
    let common = [
        "eval",
        "--data",
        &data_arg,
        "--base",
        "--adapter",
        "peft=tests/fixtures/smollm2/peft-adapter",
        "--metrics",
        "loss,f1,rougeL",
        "--max-tokens",
        "8",
        "--report",
        &report_arg,
    ];
    let pass = ft(&[&common[..], &["--gate", "f1>=0 && loss>0"]].concat())?;
    let stderr = String::from_utf8_lossy(&pass.stderr);
    assert_eq!(pass.status.code(), Some(0), "{stderr}");
    let stdout = String::from_utf8_lossy(&pass.stdout);
    assert!(
        stdout.contains("| peft |") && stdout.contains("**PASS**"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("report.json"))?)?;
    assert_eq!(json["gate"][0]["passed"], true);
    assert!(report.join("chart.svg").is_file() && report.join("report.md").is_file());

    let fail = ft(&[&common[..], &["--gate", "rougeL>100*base"]].concat())?;
    let stderr = String::from_utf8_lossy(&fail.stderr);
    assert_eq!(fail.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gate failed"), "{stderr}");
    assert!(String::from_utf8_lossy(&fail.stdout).contains("**FAIL**"));

    for (args, needle) in [
        (
            vec![
                "eval",
                "--data",
                &data_arg,
                "--base",
                "--gate",
                "rougeL >> 2",
            ],
            "--gate `rougeL >> 2`",
        ),
        (
            vec![
                "eval",
                "--data",
                &data_arg,
                "--base",
                "--metrics",
                "loss,meteor",
            ],
            "meteor",
        ),
        (
            vec!["eval", "--data", "missing.jsonl", "--base"],
            "missing.jsonl",
        ),
        (vec!["eval", "--data", &data_arg], "nothing to evaluate"),
        (
            vec!["eval", "--data", &data_arg, "--adapter", "noequals"],
            "NAME=DIR",
        ),
    ] {
        let output = ft(&args)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle) && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    Ok(())
}

/// Sends one HTTP/1.1 request and returns the response text.
fn http(port: u16, request: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[test]
fn serve_answers_over_http_until_stopped() -> Result<()> {
    if ft::core::testing::default_gguf().is_none() {
        return Ok(());
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ft"))
        .args([
            "serve",
            "--port",
            "0",
            "--adapter",
            "peft=tests/fixtures/smollm2/peft-adapter",
        ])
        .current_dir(repo())
        .env("RUST_LOG", "ft=info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let port: u16 = loop {
        let line = lines.next().context("server exited before listening")??;
        if let Some(address) = line.split("http://127.0.0.1:").nth(1) {
            break address.split_whitespace().next().context("port")?.parse()?;
        }
        assert!(Instant::now() < deadline, "no listening line");
    };
    let body = r#"{"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "max_tokens": 24}"#;
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = http(port, &request);
    let health = http(
        port,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    child.kill()?;
    child.wait()?;
    let response = response?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(r#""content":"The capital of France is Paris.""#),
        "{response}"
    );
    assert!(health?.contains(r#""adapters":["peft"]"#));
    Ok(())
}
