//! A batch of drafts for an audience, the one code path of `audience draft`, the REPL's `/draft` and the agent's
//! `draft_emails` tool: [`prepare`] reads the recipients (each treatment member with its facts and next-best
//! action, or one per segment or action) and the drafts an interrupted run finished; [`Prepared::generate`] writes
//! the rest with at most `concurrency` requests in flight, appends each finished draft at once to the partial file
//! (what `--resume` reads), and writes the output through a temporary file in the recipients' order, whatever
//! order the replies came in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow};
use audience_tools::audience::AudienceDefinition;
use audience_tools::audience::actions::{self, ActionTable};
use audience_tools::audience::export::{Members, for_each_member};
use audience_tools::stores::Stores;
use futures::StreamExt as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Context, Draft, DraftPrompts, Recipient, looks_like_instruction};
use crate::campaign::{ExportFile, Format, Holdout, email_sha256};
use crate::exit::{FailureExt, FailureKind, tool_failure};
use crate::ledger::{Ledger, UsageRecord, UsageTotals};
use crate::provider::ChatModel;

/// What one draft is written for: a member (from that member's facts), or every member of a segment or of a
/// next-best action (with the {{first_name}} merge tag). The variants carry no doc comments: the model's schema is
/// then a plain enum of the names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Per {
    #[default]
    Member,
    Segment,
    Action,
}

/// The columns of a drafts file.
const DRAFT_COLUMNS: [&str; 11] =
    ["id", "email", "segment", "action", "subject", "preheader", "body", "cta", "status", "reason", "tokens"];

/// What a batch writes and how.
pub struct Batch<'a> {
    pub members: Members<'a>,
    /// The file to write: `.csv` or `.jsonl` (replaced only when complete).
    pub out: PathBuf,
    pub offer: Option<String>,
    pub per: Per,
    /// Drafts this run writes at most (the rest are left for a run with `resume`).
    pub limit: Option<usize>,
    /// Keep the drafts an interrupted run finished.
    pub resume: bool,
    /// E-mails written as SHA-256 hashes (`email_sha256`).
    pub mask_pii: bool,
    /// The export's holdout: its control group gets no draft.
    pub holdout: Option<Holdout>,
    pub rules: &'a ActionTable,
    pub prompts: DraftPrompts,
}

/// The model drafts are written with, how many of its requests may be in flight, and what the ledger records of it.
pub struct Writer<'a> {
    pub model: &'a ChatModel,
    /// The provider's name and the model id, for the usage records.
    pub provider: &'a str,
    pub model_name: &'a str,
    /// Where the usage ledger is.
    pub data_dir: &'a Path,
    /// Requests in flight at most: 1 for the local model (it serves one), a few for a hosted provider.
    pub concurrency: usize,
}

/// What a batch did: the answer of the tool, and the summary of the command.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DraftSummary {
    pub out: PathBuf,
    pub drafts: u64,
    pub accepted: u64,
    pub accepted_first_try: u64,
    pub accepted_after_retry: u64,
    pub rejected: u64,
    /// Members of the holdout's control group: no draft.
    pub held_out: u64,
    /// Drafts kept from an interrupted run.
    pub resumed: u64,
    /// Recipients left for a later run (the limit).
    pub remaining: u64,
    pub tokens: u64,
    /// The model calls of this run, priced by the price table (also in the usage ledger); unknown without a price.
    pub cost_usd: Option<f64>,
    /// This run's model calls, tokens and cost, as the ledger totals them (one record per draft), for the session's
    /// totals (`/cost`) of a chat that asked for the drafts.
    #[serde(skip)]
    pub usage: UsageTotals,
}

impl DraftSummary {
    /// The summary in words, without what to do about the drafts left (the command and the agent say it their
    /// own way).
    pub fn line(&self) -> String {
        format!(
            "{} drafts in {}: {} accepted ({} at the first try, {} after one retry), {} rejected; {} held out as \
             control{}",
            self.drafts,
            self.out.display(),
            self.accepted,
            self.accepted_first_try,
            self.accepted_after_retry,
            self.rejected,
            self.held_out,
            if self.resumed > 0 { format!("; {} kept from the interrupted run", self.resumed) } else { String::new() },
        )
    }

    /// Adds a finished draft's row.
    fn count(&mut self, row: &Map<String, Value>) {
        self.drafts += 1;
        self.tokens += row.get("tokens").and_then(Value::as_u64).unwrap_or(0);
        let first_try = row.get("attempts").and_then(Value::as_u64) == Some(1);
        match row.get("status").and_then(Value::as_str) {
            Some("accepted") if first_try => {
                self.accepted += 1;
                self.accepted_first_try += 1;
            }
            Some("accepted") => {
                self.accepted += 1;
                self.accepted_after_retry += 1;
            }
            _ => self.rejected += 1,
        }
    }
}

/// A batch ready to generate: its recipients, what the checks know, and the drafts already finished.
pub struct Prepared {
    out: PathBuf,
    format: Format,
    mask_pii: bool,
    context: Context,
    recipients: Vec<Recipient>,
    /// Rows finished by an interrupted run, kept with `resume`.
    done: Vec<Map<String, Value>>,
    /// How many of the recipients not done this run writes.
    this_run: usize,
    summary: DraftSummary,
}

/// The file beside the output that holds each finished draft as soon as it is done, for `--resume`.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial.jsonl");
    out.with_file_name(name)
}

/// Reads what `batch` needs from the stores: every customer's e-mail, full name and interests (for the checks), and
/// the recipients with their facts and actions; and the drafts an interrupted run finished, with `resume`.
pub async fn prepare(stores: &Stores, batch: Batch<'_>) -> Result<Prepared> {
    let format = match Format::from_path(&batch.out).kind(FailureKind::Usage)? {
        Format::Json => {
            return Err(anyhow!("drafts are written as .csv or .jsonl (a draft at a time)")).kind(FailureKind::Usage);
        }
        format => format,
    };
    let mut context = Context { prompts: batch.prompts, offer: batch.offer, ..Context::default() };
    let mut products = BTreeSet::new();
    let everyone = AudienceDefinition::default();
    let fields = ["external_id", "first_name", "last_name", "email", "interests"];
    for_each_member(stores, Members::Definition(&everyone), &fields, &[], |record| {
        let text = |key: &str| record.get(key).and_then(Value::as_str).map(str::to_lowercase);
        if let Some(email) = text("email") {
            context.emails.insert(email.trim().to_owned());
        }
        if let (Some(first), Some(last)) = (text("first_name"), text("last_name")) {
            context.full_names.insert(format!("{} {}", first.trim(), last.trim()));
        }
        for interest in record.get("interests").and_then(Value::as_array).into_iter().flatten() {
            if let Some(interest) = interest.as_str() {
                products.insert(interest.to_owned());
            }
        }
        Ok(())
    })
    .await
    .map_err(tool_failure)?;
    context.products = products.into_iter().collect();

    let (members, held_out) = treatment_members(stores, batch.members, batch.rules, batch.holdout.as_ref()).await?;
    let recipients = match batch.per {
        Per::Member => members,
        Per::Segment | Per::Action => group_recipients(&members, batch.per),
    };

    let partial = partial_path(&batch.out);
    let mut done: Vec<Map<String, Value>> = Vec::new();
    if batch.resume && partial.exists() {
        let text = std::fs::read_to_string(&partial).kind(FailureKind::Input)?;
        // A line cut by the interruption is written again.
        done = text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    }
    let done_ids: HashSet<&str> = done.iter().filter_map(|row| row.get("id").and_then(Value::as_str)).collect();
    let todo = recipients.iter().filter(|r| !done_ids.contains(r.id.as_str())).count();
    let this_run = batch.limit.map_or(todo, |limit| limit.min(todo));
    let mut summary = DraftSummary {
        out: batch.out.clone(),
        held_out,
        resumed: done.len() as u64,
        remaining: (todo - this_run) as u64,
        ..DraftSummary::default()
    };
    for row in &done {
        summary.count(row);
    }
    Ok(Prepared { out: batch.out, format, mask_pii: batch.mask_pii, context, recipients, done, this_run, summary })
}

/// The audience's members outside the holdout's control group, each with its facts and action, in customer order;
/// and how many the control group held out.
async fn treatment_members(
    stores: &Stores,
    members: Members<'_>,
    rules: &ActionTable,
    holdout: Option<&Holdout>,
) -> Result<(Vec<Recipient>, u64)> {
    let column = actions::rule_column(stores, rules).await.map_err(tool_failure)?;
    let fields = [
        "external_id",
        "first_name",
        "last_name",
        "email",
        "favorite_color",
        "segment",
        "interests",
        "preferred_colors",
        "last_purchase",
    ];
    let mut recipients = Vec::new();
    let mut held_out = 0u64;
    for_each_member(stores, members, &fields, &[column], |record: Map<String, Value>| {
        let text = |key: &str| record.get(key).and_then(Value::as_str).map(str::to_owned);
        let list = |key: &str| -> Vec<String> {
            record
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let id = text("external_id").unwrap_or_default();
        if holdout.is_some_and(|h| h.group(&id) == "control") {
            held_out += 1;
            return Ok(());
        }
        let stored: Vec<String> =
            ["first_name", "last_name", "email", "favorite_color"].iter().filter_map(|k| text(k)).collect();
        let untrusted: Vec<String> = stored.into_iter().filter(|value| looks_like_instruction(value)).collect();
        let first_name = text("first_name").filter(|name| !untrusted.contains(name));
        let full_name =
            text("first_name").zip(text("last_name")).map(|(f, l)| format!("{} {}", f.trim(), l.trim()).to_lowercase());
        let (action, _) = rules.describe(rules.assigned(record.get(actions::RULE_COLUMN)));
        recipients.push(Recipient {
            id,
            first_name,
            email: text("email"),
            full_name,
            segment: text("segment").unwrap_or_default(),
            action: action.to_owned(),
            interests: list("interests"),
            colors: list("preferred_colors"),
            last_purchase: text("last_purchase").map(|ts| ts.chars().take(10).collect()),
            untrusted,
            group: false,
        });
        Ok(())
    })
    .await
    .map_err(tool_failure)?;
    Ok((recipients, held_out))
}

impl Prepared {
    /// Writes the drafts left, at most `writer.concurrency` at a time, and then the output file. A provider that
    /// fails ends the batch with the drafts finished so far in the partial file, for a run with `resume`.
    pub async fn generate(self, writer: Writer<'_>) -> Result<DraftSummary> {
        let Prepared { out, format, mask_pii, context, recipients, mut done, this_run, mut summary } = self;
        let partial = partial_path(&out);
        // The kept drafts are written again, so a line the interruption cut is not left in the middle of the file.
        let mut partial_file = std::io::BufWriter::new(std::fs::File::create(&partial).kind(FailureKind::Input)?);
        for row in &done {
            serde_json::to_writer(&mut partial_file, row)?;
            partial_file.write_all(b"\n").kind(FailureKind::Input)?;
        }
        partial_file.flush().kind(FailureKind::Input)?;

        let done_ids: HashSet<String> =
            done.iter().filter_map(|row| row.get("id").and_then(Value::as_str).map(str::to_owned)).collect();
        let todo: Vec<&Recipient> = recipients.iter().filter(|r| !done_ids.contains(&r.id)).take(this_run).collect();
        let mut ledger = Ledger::open(writer.data_dir)?;
        summary.cost_usd = Some(0.0);
        let bar = indicatif::ProgressBar::new(this_run as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template("drafts {bar:30} {pos}/{len} {elapsed}, about {eta} left")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        // With one request in flight the local model reuses the prompt cache of the shared instructions; a hosted
        // provider's rate limits are met by the transport (`RetryingHttp`: Retry-After, backoff, one pause for all).
        // The futures are made before they go into the stream: a stream of a closure over borrowed recipients
        // makes the caller's future (the agent tool's) fail to prove it is `Send` (the compiler cannot tell the
        // closure works for any lifetime of the recipient).
        let writes: Vec<_> = todo.into_iter().map(|recipient| timed_write(writer.model, recipient, &context)).collect();
        let mut finished = futures::stream::iter(writes).buffer_unordered(writer.concurrency.max(1));
        while let Some((recipient, outcome, elapsed)) = finished.next().await {
            let outcome = outcome.kind(FailureKind::Provider)?;
            let usage = UsageRecord::new(
                writer.provider,
                writer.model_name,
                outcome.calls.clone(),
                0,
                ledger.prices(),
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                true,
            );
            summary.cost_usd = summary.cost_usd.zip(usage.cost_usd).map(|(sum, cost)| sum + cost);
            ledger.record(&usage);
            let row = draft_row(recipient, &outcome, mask_pii);
            serde_json::to_writer(&mut partial_file, &row)?;
            partial_file.write_all(b"\n").kind(FailureKind::Input)?;
            partial_file.flush().kind(FailureKind::Input)?;
            summary.count(&row);
            done.push(row);
            bar.inc(1);
        }
        bar.finish_and_clear();
        drop(partial_file);

        // The recipients' order, whatever order the replies came in; kept rows of recipients no longer in the
        // audience follow in the order they were written.
        let position: HashMap<&str, usize> =
            recipients.iter().enumerate().map(|(index, r)| (r.id.as_str(), index)).collect();
        let rank = |row: &Map<String, Value>| {
            row.get("id").and_then(Value::as_str).and_then(|id| position.get(id)).copied().unwrap_or(usize::MAX)
        };
        done.sort_by_key(rank);
        let mut columns: Vec<String> = DRAFT_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
        if mask_pii {
            columns[1] = "email_sha256".to_owned();
        }
        let mut file = ExportFile::create(&out, format, columns).kind(FailureKind::Input)?;
        for mut row in done {
            row.remove("attempts");
            if mask_pii && let Some(email) = row.remove("email") {
                row.insert("email_sha256".to_owned(), email);
            }
            file.write(&row).kind(FailureKind::Input)?;
        }
        file.finish().kind(FailureKind::Input)?;
        if summary.remaining == 0 {
            std::fs::remove_file(&partial).ok();
        }
        summary.usage = ledger.totals().clone();
        Ok(summary)
    }
}

/// One recipient's draft, and how long it took.
async fn timed_write<'a>(
    model: &ChatModel,
    recipient: &'a Recipient,
    context: &Context,
) -> (&'a Recipient, Result<super::Outcome>, std::time::Duration) {
    let start = Instant::now();
    let outcome = super::write(model, recipient, context).await;
    (recipient, outcome, start.elapsed())
}

/// A finished draft as a row of the partial file (and, without `attempts`, of the output).
fn draft_row(recipient: &Recipient, outcome: &super::Outcome, mask_pii: bool) -> Map<String, Value> {
    let email = match (&recipient.email, mask_pii) {
        (Some(email), true) => Value::String(email_sha256(email)),
        (Some(email), false) => Value::String(email.clone()),
        (None, _) => Value::Null,
    };
    let piece = |f: fn(&Draft) -> &String| outcome.draft.as_ref().map_or(Value::Null, |d| Value::String(f(d).clone()));
    [
        ("id", Value::String(recipient.id.clone())),
        ("email", email),
        ("segment", Value::String(recipient.segment.clone())),
        ("action", Value::String(recipient.action.clone())),
        ("subject", piece(|d| &d.subject)),
        ("preheader", piece(|d| &d.preheader)),
        ("body", piece(|d| &d.body)),
        ("cta", piece(|d| &d.cta)),
        ("status", Value::String(outcome.status.to_owned())),
        ("reason", outcome.reason.clone().map_or(Value::Null, Value::String)),
        ("tokens", Value::from(outcome.tokens)),
        ("attempts", Value::from(outcome.attempts)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// One recipient per segment or action: the members' most common interests, no personal fact.
fn group_recipients(members: &[Recipient], per: Per) -> Vec<Recipient> {
    let mut groups: BTreeMap<(&str, String), Vec<&Recipient>> = BTreeMap::new();
    for member in members {
        let key = match per {
            Per::Segment => ("segment", member.segment.clone()),
            _ => ("action", member.action.clone()),
        };
        groups.entry(key).or_default().push(member);
    }
    groups
        .into_iter()
        .map(|((by, name), group)| {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for member in &group {
                for interest in &member.interests {
                    *counts.entry(interest).or_default() += 1;
                }
            }
            let mut common: Vec<(&str, usize)> = counts.into_iter().collect();
            common.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            Recipient {
                id: format!("{by}:{name}"),
                first_name: None,
                email: None,
                full_name: None,
                segment: if by == "segment" { name.clone() } else { String::new() },
                action: if by == "action" { name.clone() } else { String::new() },
                interests: common.into_iter().take(3).map(|(i, _)| i.to_owned()).collect(),
                colors: Vec::new(),
                last_purchase: None,
                untrusted: Vec::new(),
                group: true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::provider::{ApiKey, ProviderConfig, ProviderKind, RetryPolicy};

    /// What the scripted server saw: each request's arrival and body, when it sent its 429, and the most requests
    /// it held at once.
    #[derive(Default)]
    struct Seen {
        arrivals: Mutex<Vec<(Instant, String)>>,
        rate_limited_at: Mutex<Option<Instant>>,
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
    }

    /// Reads one HTTP/1.1 request; returns its body.
    async fn read_request(stream: &mut TcpStream) -> String {
        let mut raw = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "the client closed the connection mid-request");
            raw.extend_from_slice(&buffer[..read]);
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if raw.len() >= end + 4 + length {
                return String::from_utf8_lossy(&raw[end + 4..end + 4 + length]).into_owned();
            }
        }
    }

    /// The first request gets a 429 asking for one second; every other one a draft, after holding it a while so
    /// that requests overlap.
    async fn answer(mut stream: TcpStream, seen: Arc<Seen>) {
        let body = read_request(&mut stream).await;
        let now = Instant::now();
        let first = {
            let mut arrivals = seen.arrivals.lock().unwrap();
            arrivals.push((now, body));
            arrivals.len() == 1
        };
        let in_flight = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.most_in_flight.fetch_max(in_flight, Ordering::SeqCst);
        let reply = if first {
            *seen.rate_limited_at.lock().unwrap() = Some(Instant::now());
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
             content-length: 2\r\nconnection: close\r\n\r\n{}"
                .to_owned()
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let draft = serde_json::json!({"subject": "Something new for you", "preheader": "Picked for you",
                                           "body": "We picked a few new arrivals for you.", "cta": "Shop now"});
            let completion = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": draft.to_string()},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
            })
            .to_string();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                completion.len(),
                completion
            )
        };
        seen.in_flight.fetch_sub(1, Ordering::SeqCst);
        stream.write_all(reply.as_bytes()).await.unwrap();
        stream.shutdown().await.ok();
    }

    /// Recipient `id`: each has a name of its own, so that each draft's request is its own.
    fn member(id: usize) -> Recipient {
        let names = ["Anna", "Ben", "Cleo", "Dora", "Emil", "Fay"];
        Recipient {
            id: id.to_string(),
            first_name: Some(names[(id - 1) % names.len()].into()),
            email: Some(format!("anna{id}@example.com")),
            full_name: None,
            segment: "VIP Loyalty".into(),
            action: "early_access".into(),
            interests: Vec::new(),
            colors: Vec::new(),
            last_purchase: None,
            untrusted: Vec::new(),
            group: false,
        }
    }

    /// A hosted provider's rate limit: the 429's Retry-After holds every request of the batch (the retry and the
    /// drafts after it) for its second, at most `concurrency` requests are ever in flight, and the file lists the
    /// drafts in the recipients' order although they finished in another.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_keeps_its_concurrency_waits_out_retry_after_and_keeps_its_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let server_seen = seen.clone();
        let server = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(answer(stream, server_seen.clone()));
            }
        });
        let provider = ProviderConfig {
            kind: ProviderKind::OpenAiCompatible,
            model: "gpt-4o-mini".into(),
            base_url: Some(url),
            api_key: Some(ApiKey::from("test")),
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            cassette: None,
        };
        let model = provider.chat_model().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("drafts.csv");
        let recipients: Vec<Recipient> = (1..=6).map(member).collect();
        let prepared = Prepared {
            out: out.clone(),
            format: Format::Csv,
            mask_pii: false,
            context: Context::default(),
            this_run: recipients.len(),
            recipients,
            done: Vec::new(),
            summary: DraftSummary { out: out.clone(), ..DraftSummary::default() },
        };
        let concurrency = 2;
        let writer = Writer {
            model: &model,
            provider: "openai-compatible",
            model_name: "gpt-4o-mini",
            data_dir: dir.path(),
            concurrency,
        };
        let summary = prepared.generate(writer).await.unwrap();
        server.abort();

        assert_eq!((summary.drafts, summary.accepted_first_try), (6, 6), "{summary:?}");
        let arrivals = seen.arrivals.lock().unwrap().clone();
        assert_eq!(arrivals.len(), 7, "six drafts and one retry");
        assert_eq!(seen.most_in_flight.load(Ordering::SeqCst), concurrency, "the batch overlaps, within its bound");
        let rate_limited_at = seen.rate_limited_at.lock().unwrap().unwrap();
        let retried = arrivals.iter().skip(1).find(|(_, body)| *body == arrivals[0].1).unwrap();
        assert!(retried.0 >= rate_limited_at + Duration::from_secs(1), "the retry waited out Retry-After");
        // The two requests sent before the 429 came back aside, nothing went out during the wait.
        for (arrived, _) in &arrivals[2..] {
            assert!(*arrived >= rate_limited_at + Duration::from_secs(1), "a request went out during the pause");
        }
        let ids: Vec<String> =
            csv::Reader::from_path(&out).unwrap().records().map(|r| r.unwrap()[0].to_owned()).collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5", "6"]);
        assert!(!partial_path(&out).exists());
    }
}
