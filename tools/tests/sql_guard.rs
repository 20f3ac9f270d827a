//! The SQL guard against an injection corpus, and the database layer's own read-only enforcement.
//!
//! Every attack is refused by the guard and, run through the tool, comes back as a correctable error;
//! afterwards every table has the same rows and the schema the same relations. Separately, writes and
//! long sleeps sent straight into `Db::begin_read_only` (bypassing the guard) are stopped by PostgreSQL.
//! Oversized and deeply nested input, hand-written and generated, is refused without crashing a thread
//! that has a tokio worker's 2 MiB stack.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly; that is its job

mod tool_support;

use std::time::{Duration, Instant};

use audience_tools::audience::{AudienceSession, Edit, FindAudience};
use audience_tools::db::ReadLimits;
use audience_tools::failure::ToolFailure;
use audience_tools::sql_analytics::{SqlAnalytics, SqlAnalyticsArgs};
use audience_tools::sql_guard::{
    ConditionTable, MAX_ANALYTICS_SQL_CHARS, MAX_CHAIN, MAX_CONDITION_CHARS, MAX_NESTING, Refusal, check_analytics,
    check_condition,
};
use audience_tools::trace::TracedTool;
use rig_core::DynModel;
use rig_core::operation::Completion;
use tool_support::TestDb;

/// Statements that must never run.
const ATTACKS: &[&str] = &[
    // stacked queries
    "SELECT 1; DROP TABLE customers",
    "SELECT count(*) FROM customers; DELETE FROM events;",
    "SELECT $$a$$; DROP TABLE customers",
    // plain writes and DDL
    "DELETE FROM customers",
    "INSERT INTO customers (customer_id, first_name, last_name, email, country) VALUES (99, 'x', 'y', 'z', 'PL')",
    "UPDATE profiles SET total_spent = 0",
    "DROP TABLE events",
    "TRUNCATE customers",
    "CREATE TABLE stolen AS SELECT * FROM customers",
    "ALTER TABLE customers ADD COLUMN x int",
    "GRANT ALL ON customers TO PUBLIC",
    "SET ROLE postgres",
    "RESET ROLE",
    "SET statement_timeout = 0",
    "EXPLAIN ANALYZE DELETE FROM customers",
    "DO $$ BEGIN DELETE FROM customers; END $$",
    "CALL do_something()",
    "VACUUM customers",
    "LISTEN channel",
    "PREPARE p AS DELETE FROM customers",
    // writes hidden in CTEs
    "WITH d AS (DELETE FROM customers RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE profiles SET total_spent = 0 RETURNING 1) SELECT * FROM u",
    "WITH i AS (INSERT INTO events SELECT * FROM events RETURNING 1) SELECT 1",
    // dangerous functions
    "SELECT pg_sleep(10)",
    "SELECT count(*) FROM customers WHERE pg_sleep(10) IS NULL",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT current_setting('data_directory')",
    "SELECT version()",
    "SELECT txid_current()",
    "SELECT query_to_xml('DELETE FROM customers', true, true, '')",
    "SELECT * FROM dblink('dbname=test', 'DELETE FROM customers') AS t(x int)",
    "SELECT dblink_exec('dbname=test', 'DROP TABLE customers')",
    "SELECT \"pg_sleep\"(1)",
    "SELECT pg_catalog.pg_sleep(1)",
    "SELECT public.count(*) FROM customers",
    "SELECT * FROM generate_series(1, 100000000)",
    "SELECT array(SELECT pg_sleep(1))",
    // COPY and SELECT INTO
    "COPY customers TO PROGRAM 'touch /tmp/audience_pwned'",
    "COPY (SELECT * FROM customers) TO '/tmp/audience_dump'",
    "SELECT * INTO stolen FROM customers",
    "SELECT customer_id INTO TEMP t FROM customers",
    // locking
    "SELECT * FROM customers FOR UPDATE",
    "SELECT * FROM customers FOR SHARE NOWAIT",
    // comments
    "SELECT * FROM customers -- hidden",
    "SELECT /* x */ * FROM customers",
    "SELECT * FROM customers /*/ DROP TABLE events; /*/",
    // unicode look-alikes and invisible characters
    "SELECT * FROM \u{0441}ustomers",
    "SELECT\u{00A0}* FROM customers",
    "SELECT 1\u{FF1B} DROP TABLE customers",
    "SELECT * FROM customers WHERE country = 'DE'\u{200B}",
    // system catalogs and other schemas
    "SELECT * FROM information_schema.tables",
    "SELECT * FROM pg_catalog.pg_user",
    "SELECT * FROM pg_user",
    "SELECT usename, passwd FROM pg_shadow",
    "SELECT * FROM pg_settings",
    "SELECT * FROM customers JOIN pg_stat_activity ON true",
    "SELECT * FROM public.customers",
    "SELECT 'pg_authid'::regclass",
    "SELECT relname FROM pg_class",
    "SELECT (SELECT count(*) FROM pg_roles)",
    // CTE names that would resolve to a system view
    "WITH pg_settings AS (SELECT * FROM pg_settings) SELECT * FROM pg_settings",
    "SELECT * FROM (WITH pg_user AS (SELECT 1) SELECT 1) s, pg_user",
    "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
    "WITH x AS (SELECT * FROM x) SELECT * FROM x",
    "SELECT * FROM (WITH inner_cte AS (SELECT 1) SELECT 1) s, inner_cte",
    // parameters and odd syntax
    "SELECT $1",
    "SELECT * FROM customers WHERE email = $1",
    "TABLE customers",
    "SELECT * FROM ONLY customers LIMIT 1; SELECT 2",
    // NUL characters, which PostgreSQL's protocol cannot carry (they used to break the connection)
    "SELECT 'a\u{0}b' AS nul",
    "SELECT count(*) FROM customers WHERE first_name = 'x\u{0}'",
    "SELECT U&'\\0000' AS nul",
];

/// Gate conditions that must be refused.
const GATE_ATTACKS: &[&str] = &[
    "customer_id IN (SELECT customer_id FROM profiles)",
    "EXISTS (SELECT 1 FROM pg_user)",
    "(SELECT true)",
    "true; DROP TABLE customers",
    "event_type = 'purchase') OR (1 = 1",
    "price > 1 UNION SELECT customer_id FROM customers",
    "pg_sleep(5) IS NULL",
    "1 = 1 -- comment",
    "total_spent > 100",
    "set_config('role', 'postgres', false) IS NOT NULL",
    "country = 'DE' AND \u{0441}ountry = 'PL'",
    "ts > $1",
    "country = 'D\u{0}E'",
];

/// Valid analytics queries: accepted, and the guard's rendering runs on PostgreSQL.
const VALID: &[&str] = &[
    "SELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY n DESC, country",
    "SELECT date_trunc('month', ts) AS month, sum(price * quantity) AS revenue FROM events \
     WHERE event_type = 'purchase' GROUP BY 1 ORDER BY 1",
    "SELECT extract(year FROM ts)::int AS y, count(*) FROM events GROUP BY 1",
    "WITH spend AS (SELECT customer_id, sum(price * quantity) AS s FROM events GROUP BY customer_id) \
     SELECT c.country, round(avg(spend.s), 2) AS avg_spend FROM spend JOIN customers c USING (customer_id) GROUP BY c.country",
    "SELECT count(*) FROM profiles WHERE 'watches' = ANY(interests)",
    "SELECT customer_id FROM profiles WHERE interests @> ARRAY['watches'] AND last_purchase > now() - interval '30 days'",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total_spent) AS median FROM profiles",
    "SELECT first_name, rank() OVER (PARTITION BY country ORDER BY total_spent DESC) AS r FROM profiles",
    "SELECT count(*) FILTER (WHERE churned) AS churned, count(*) AS total FROM profiles",
    "SELECT * FROM customers WHERE signup_date >= DATE '2024-01-03' LIMIT 5;",
    "SELECT CASE WHEN age < 30 THEN 'young' ELSE 'older' END AS band, count(*) FROM customers GROUP BY 1",
    "SELECT customer_id FROM customers WHERE customer_id IN (SELECT customer_id FROM events WHERE event_type = 'purchase')",
    "SELECT lower(email) FROM customers WHERE email ILIKE '%@example.com'",
    "SELECT current_date - signup_date AS days FROM customers",
    "SELECT ts::date AS day, count(*) FROM events GROUP BY ts::date",
    "SELECT u.i AS interest, count(*) FROM profiles, unnest(interests) AS u(i) GROUP BY u.i ORDER BY 2 DESC",
    "SELECT count(*) FROM customers WHERE first_name = 'Zo\u{00EB}'",
    "SELECT now() AT TIME ZONE 'UTC' AS utc",
    "SELECT string_agg(first_name, ', ' ORDER BY first_name) FROM customers",
    "SELECT coalesce(max(price), 0) AS top, greatest(1, 2), nullif(1, 1) FROM events",
    "SELECT e.product, count(DISTINCT e.customer_id) FROM events e WHERE e.event_type = 'purchase' GROUP BY e.product \
     HAVING count(*) > 1",
    "SELECT p.* FROM profiles p WHERE p.recency_days BETWEEN 1 AND 5 ORDER BY p.customer_id",
    "SELECT 'x; DROP TABLE customers; --' AS harmless_literal",
    "SELECT customer_id FROM events WHERE event_type = 'purchase' UNION SELECT customer_id FROM events WHERE price > 100",
    "SELECT interests[1] AS first_interest, cardinality(interests) FROM profiles",
    "SELECT to_char(ts, 'YYYY-MM') AS ym, count(*) FROM events GROUP BY 1",
];

/// Valid clause conditions over one event, and over one profile.
const VALID_EVENT_CONDITIONS: &[&str] = &[
    "event_type = 'purchase' AND price > 100",
    "product = 'socks' AND ts > now() - interval '30 days'",
    "lower(product) LIKE '%watch%' OR color IN ('gold', 'silver')",
    "quantity BETWEEN 2 AND 40 AND NOT (event_type = 'view')",
];
const VALID_PROFILE_CONDITIONS: &[&str] = &[
    "total_spent > 500 AND churned",
    "country IN ('PL', 'DE') OR 'watches' = ANY(interests)",
    "recency_days BETWEEN 30 AND 90 AND NOT likes_luxury",
];

/// A condition on one event, as an event clause's `sql` is checked.
fn check_gate(condition: &str) -> Result<String, Refusal> {
    check_condition(condition, ConditionTable::Events)
}

#[test]
fn guard_refuses_every_attack_with_a_reason() {
    for sql in ATTACKS {
        match check_analytics(sql) {
            Ok(rendered) => panic!("accepted an attack: {sql}\nrendered: {rendered}"),
            Err(refusal) => assert!(refusal.to_string().starts_with("SQL refused: "), "{refusal}"),
        }
    }
    for condition in GATE_ATTACKS {
        assert!(check_gate(condition).is_err(), "accepted a gate attack: {condition}");
    }
}

#[test]
fn guard_gives_specific_reasons() {
    let reason = |sql: &str| check_analytics(sql).unwrap_err().0;
    assert!(reason("SELECT 1; SELECT 2").contains(";"));
    assert!(reason("SELECT pg_sleep(1)").contains("pg_sleep"));
    assert!(reason("SELECT * FROM pg_user").contains("pg_user"));
    assert!(reason("SELECT * INTO x FROM customers").contains("SELECT INTO"));
    assert!(reason("SELECT * FROM customers FOR UPDATE").contains("FOR UPDATE"));
    assert!(reason("SELECT -- x\n1").contains("comments"));
    assert!(reason("SELECT nope FROM customers").contains("nope"));
    assert!(reason("DELETE FROM customers").contains("SELECT"));
    assert!(check_gate("EXISTS (SELECT 1)").unwrap_err().0.contains("subqueries"));
    assert!(check_gate("total_spent > 1").unwrap_err().0.contains("total_spent"));
    // Bare columns only: the compiled query aliases the table itself.
    assert!(check_gate("events.price > 1").unwrap_err().0.contains("events"));
    let profile = |c: &str| check_condition(c, ConditionTable::Profiles).unwrap_err().0;
    assert!(profile("price > 1").contains("use only the columns of profiles"), "{}", profile("price > 1"));
}

#[test]
fn guard_accepts_ordinary_analytics_and_gates() {
    for sql in VALID {
        check_analytics(sql).unwrap_or_else(|e| panic!("refused a valid query: {sql}\n{e}"));
    }
    for condition in VALID_EVENT_CONDITIONS {
        check_gate(condition).unwrap_or_else(|e| panic!("refused a valid event condition: {condition}\n{e}"));
    }
    for condition in VALID_PROFILE_CONDITIONS {
        check_condition(condition, ConditionTable::Profiles)
            .unwrap_or_else(|e| panic!("refused a valid profile condition: {condition}\n{e}"));
    }
}

/// Runs `check` on a thread with a tokio worker's stack (2 MiB), where the tools run: a recursion too deep for it
/// aborts the whole test binary, as it aborted the CLI.
fn on_worker_stack<T: Send + 'static>(check: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(2 * 1024 * 1024).spawn(check).unwrap().join().unwrap()
}

/// `price > 0 OR price > 1 OR ...`, as in the hostile test run that crashed the process.
fn or_chain(terms: usize) -> String {
    (0..terms).map(|i| format!("price > {i}")).collect::<Vec<_>>().join(" OR ")
}

fn refusal_of(result: Result<String, Refusal>) -> String {
    match result {
        Ok(accepted) => panic!("accepted: {}", &accepted[..accepted.len().min(200)]),
        Err(refusal) => refusal.0,
    }
}

/// Regression: the 2,000-term OR chain `hybrid_discovery` was sent overflowed the stack (exit 134).
#[test]
fn a_2000_term_gate_or_chain_is_refused_without_a_crash() {
    let condition = or_chain(2000);
    let (gate, query) =
        on_worker_stack(move || (check_gate(&condition), check_condition(&condition, ConditionTable::Profiles)));
    let reason = refusal_of(gate);
    assert!(reason.contains(&format!("at most {MAX_CONDITION_CHARS} are allowed")), "{reason}");
    assert!(reason.contains("IN (...)"), "the refusal says what to do instead: {reason}");
    assert_eq!(query.unwrap_err().0, reason);
}

/// Regression: a 3,000-term WHERE sent to `sql_analytics` overflowed the stack.
#[test]
fn a_3000_term_analytics_where_is_refused_without_a_crash() {
    let sql = format!("SELECT count(*) FROM events WHERE {}", or_chain(3000));
    let reason = refusal_of(on_worker_stack(move || check_analytics(&sql)));
    assert!(reason.contains(&format!("at most {MAX_ANALYTICS_SQL_CHARS} are allowed")), "{reason}");
    assert!(reason.contains("IN (...)"), "{reason}");
}

/// Short terms fit hundreds of them under the length cap; the chain is what is refused, before it is parsed.
#[test]
fn a_long_chain_under_the_length_cap_is_refused_with_advice() {
    let terms = |n: usize| vec!["age=1"; n].join(" OR ");
    let gate = terms(400);
    let analytics = format!("SELECT count(*) FROM customers WHERE {}", terms(900));
    let arithmetic = format!("SELECT {} AS n", vec!["1"; 2000].join("+"));
    assert!(gate.len() <= MAX_CONDITION_CHARS && analytics.len() <= MAX_ANALYTICS_SQL_CHARS);
    let (gate, query, analytics, arithmetic) = on_worker_stack(move || {
        (
            check_gate(&gate),
            check_condition(&gate, ConditionTable::Profiles),
            check_analytics(&analytics),
            check_analytics(&arithmetic),
        )
    });
    for reason in [refusal_of(gate), refusal_of(query), refusal_of(analytics), refusal_of(arithmetic)] {
        assert!(reason.contains(&format!("more than {MAX_CHAIN} operators")), "{reason}");
        assert!(reason.contains("use IN (...) for a list of values"), "{reason}");
    }
    // UNION chains whole SELECTs: their commas do not break the chain.
    let unions = vec!["SELECT 1, 2"; 300].join(" UNION ");
    let reason = refusal_of(on_worker_stack(move || check_analytics(&unions)));
    assert!(reason.contains(&format!("more than {MAX_CHAIN} operators")), "{reason}");
}

/// Ordinary long inputs stay accepted: a 100-term OR chain, and a long IN list (a flat list, not a chain).
#[test]
fn chains_and_lists_within_the_limits_are_accepted() {
    let gate = or_chain(MAX_CHAIN / 2);
    let analytics = format!("SELECT count(*) FROM events WHERE {}", or_chain(MAX_CHAIN / 2 - 10));
    let values = (0..600).map(|i| format!("'{}'", i % 100)).collect::<Vec<_>>().join(", ");
    let list = format!("country IN ({values})");
    assert!(list.len() > MAX_CONDITION_CHARS / 2 && list.len() <= MAX_CONDITION_CHARS);
    on_worker_stack(move || {
        assert_eq!(check_gate(&gate).unwrap(), gate);
        assert!(check_condition(&gate, ConditionTable::Events).is_ok());
        assert_eq!(check_analytics(&analytics).unwrap(), analytics);
        assert_eq!(check_condition(&list, ConditionTable::Profiles).unwrap(), list);
    });
}

#[test]
fn deep_nesting_is_refused_as_nesting() {
    let parenthesized = |depth: usize| format!("{}price > 0{}", "(".repeat(depth), ")".repeat(depth));
    let cases = |depth: usize| "CASE WHEN price > 0 THEN ".repeat(depth) + "1" + &" END".repeat(depth) + " > 0";
    let calls = |depth: usize| format!("SELECT {}price{} FROM events", "abs(".repeat(depth), ")".repeat(depth));
    let (accepted, refused) = on_worker_stack(move || {
        let accepted = [check_gate(&parenthesized(MAX_NESTING)), check_gate(&cases(MAX_NESTING - 1))];
        let refused = [
            check_gate(&parenthesized(MAX_NESTING + 1)),
            check_gate(&parenthesized(1_500)),
            check_condition(&parenthesized(1_900), ConditionTable::Profiles),
            check_gate(&cases(MAX_NESTING + 1)),
            check_analytics(&calls(MAX_NESTING + 1)),
            check_analytics(&calls(1_500)),
            check_analytics(&format!("SELECT count(*) FROM events WHERE {}", parenthesized(4_000))),
        ];
        (accepted, refused)
    });
    for result in accepted {
        result.unwrap();
    }
    for result in refused {
        let reason = refusal_of(result);
        assert!(reason.contains(&format!("more than {MAX_NESTING} levels deep")), "{reason}");
    }
    // sqlparser's own recursion limit stops unary chains; its error reads as a nesting refusal too.
    let reason = refusal_of(check_gate(&format!("{}price > 0", "- ".repeat(60))));
    assert!(reason.contains("nests too deeply"), "{reason}");
}

/// Regression: a NUL inside a string literal reached PostgreSQL and broke the connection.
#[test]
fn nul_characters_are_refused() {
    for condition in ["country = 'D\u{0}E'", "price > 0\u{0}", "country = U&'\\0000'"] {
        let reason = refusal_of(check_gate(condition));
        assert!(reason.contains("NUL characters are not allowed"), "{condition:?}: {reason}");
    }
    for sql in ["SELECT 'a\u{0}b'", "SELECT $$\u{0}$$", "SELECT \"a\u{0}\" FROM customers"] {
        let reason = refusal_of(check_analytics(sql));
        assert!(reason.contains("NUL characters are not allowed"), "{sql:?}: {reason}");
    }
}

#[test]
fn input_over_the_length_caps_is_refused_stating_the_cap() {
    // A flat, otherwise valid IN list exactly at the cap and one character over it.
    let list = |chars: usize, prefix: &str| {
        let mut text = format!("{prefix}country IN ('DE'");
        while text.len() + ", 'DE')".len() <= chars {
            text.push_str(", 'DE'");
        }
        text.push_str(&" ".repeat(chars - 1 - text.len()));
        text + ")"
    };
    let at_cap = list(MAX_CONDITION_CHARS, "");
    assert_eq!(at_cap.len(), MAX_CONDITION_CHARS);
    let profile = |condition: &str| check_condition(condition, ConditionTable::Profiles);
    profile(&at_cap).unwrap();
    let over = list(MAX_CONDITION_CHARS + 1, "");
    let reason = refusal_of(profile(&over));
    assert!(reason.contains(&format!("{} characters long; at most {MAX_CONDITION_CHARS}", over.len())), "{reason}");

    let prefix = "SELECT count(*) FROM customers WHERE ";
    check_analytics(&list(MAX_ANALYTICS_SQL_CHARS, prefix)).unwrap();
    let reason = refusal_of(check_analytics(&list(MAX_ANALYTICS_SQL_CHARS + 1, prefix)));
    assert!(reason.contains(&format!("at most {MAX_ANALYTICS_SQL_CHARS} are allowed")), "{reason}");
    // The cap counts characters, not bytes: a literal of multi-byte letters is as long as it looks.
    let letters = format!("first_name = '{}'", "\u{00EB}".repeat(MAX_CONDITION_CHARS - 20));
    profile(&letters).unwrap();
}

/// A small seeded generator (SplitMix64): the same cases on every run, and no dependency for a few random numbers.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    /// A repetition count: mostly small, often around the guard's limits, sometimes far beyond them.
    fn size(&mut self, limit: usize) -> usize {
        match self.below(10) {
            0..=4 => 1 + self.below(8),
            5..=7 => (limit * 3 / 4) + self.below(limit / 2 + 2),
            _ => limit + self.below(limit * 3),
        }
    }
}

/// Random boolean conditions over gate columns, built from the shapes that nest: parentheses, AND/OR chains,
/// arithmetic chains, nested calls, CASE, NOT and minus chains, casts, IN lists, IS chains, subqueries and UNION
/// chains, and mixtures of these (`budget` bounds the generator's own recursion, not the size of what it writes).
fn condition(rng: &mut Seeded, budget: usize) -> String {
    let number = |rng: &mut Seeded| -> String {
        let column = rng.pick(&["price", "quantity", "price", "quantity", "1"]);
        match rng.below(7) {
            0 => format!("{column}{}", " + 1".repeat(rng.size(MAX_CHAIN))),
            1 => {
                let depth = rng.size(MAX_NESTING);
                format!("{}{column}{}", "abs(".repeat(depth), ")".repeat(depth))
            }
            2 => format!("{}{column}", "- ".repeat(rng.size(MAX_CHAIN))),
            3 => format!("{column}{}", "::int".repeat(rng.size(MAX_CHAIN))),
            4 => {
                let depth = rng.size(MAX_NESTING);
                format!("{}{column}{}", "coalesce(".repeat(depth), ", 0)".repeat(depth))
            }
            _ => column.to_owned(),
        }
    };
    let leaf = |rng: &mut Seeded| -> String {
        match rng.below(4) {
            0 => {
                let values = (0..rng.size(300)).map(|i| format!("'v{i}'")).collect::<Vec<_>>();
                format!("product IN ({})", values.join(", "))
            }
            1 => format!("{} BETWEEN 1 AND 9", number(rng)),
            _ => format!("{} {} {}", number(rng), rng.pick(&["=", "<", ">=", "<>"]), rng.below(100)),
        }
    };
    if budget == 0 {
        return leaf(rng);
    }
    match rng.below(10) {
        0 => {
            let depth = rng.size(MAX_NESTING);
            format!("{}{}{}", "(".repeat(depth), condition(rng, budget - 1), ")".repeat(depth))
        }
        1 | 2 => {
            let terms: Vec<String> = (0..rng.size(MAX_CHAIN / 2))
                .map(|i| if i < 3 { condition(rng, budget - 1) } else { leaf(rng) })
                .collect();
            terms.join(if rng.below(2) == 0 { " AND " } else { " OR " })
        }
        3 => format!("{}({})", "NOT ".repeat(rng.size(MAX_NESTING)), condition(rng, budget - 1)),
        4 => {
            let depth = rng.size(MAX_NESTING);
            let inner = condition(rng, budget - 1);
            "CASE WHEN price > 0 THEN ".repeat(depth) + &format!("({inner})") + &" ELSE false END".repeat(depth)
        }
        5 => format!("({}){}", condition(rng, budget - 1), " IS NOT FALSE".repeat(rng.size(MAX_CHAIN / 3))),
        6 => format!("{}({})", rng.pick(&["", "NOT ", "- 1 < 0 OR "]), condition(rng, budget - 1)),
        // Subqueries (analytics only; a gate refuses them), chained by UNION.
        7 => {
            let select = format!("SELECT customer_id FROM events WHERE {}", condition(rng, budget - 1));
            // Copies of one SELECT: their number is capped so nested UNIONs do not multiply into gigabytes.
            let copies = rng.size(MAX_CHAIN / 4).min(1 + 50_000 / select.len());
            format!("events.customer_id IN ({})", vec![select; copies].join(" UNION "))
        }
        _ => leaf(rng),
    }
}

/// Generated deep and long input, up to well beyond every limit: each call returns a result (never crashes a
/// worker-sized stack), a refusal is one short sentence, and what is accepted renders to SQL the guard accepts again
/// unchanged.
#[test]
fn generated_deep_and_long_input_is_accepted_or_refused_without_a_crash() {
    let (accepted, refused) = on_worker_stack(|| {
        let mut rng = Seeded(0x5EED_6A7E);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..1_500 {
            let condition = condition(&mut rng, 3);
            let analytics = format!("SELECT count(*) FROM events JOIN customers USING (customer_id) WHERE {condition}");
            let head = |text: &str| text.chars().take(300).collect::<String>();
            let gate = check_gate(&condition);
            for (input, result, recheck) in [
                (&condition, gate, check_gate as fn(&str) -> Result<String, Refusal>),
                (&analytics, check_analytics(&analytics), check_analytics),
            ] {
                match result {
                    Ok(rendered) => {
                        accepted += 1;
                        assert_eq!(recheck(&rendered), Ok(rendered.clone()), "rendering of {}", head(input));
                    }
                    Err(refusal) => {
                        refused += 1;
                        assert!(refusal.0.len() < 300, "a refusal echoes too much: {}", head(&refusal.0));
                    }
                }
            }
        }
        (accepted, refused)
    });
    // Both outcomes are exercised, or the generator is not testing the limits.
    assert!(accepted > 100 && refused > 100, "accepted {accepted}, refused {refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn attacks_through_the_tools_change_nothing() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), false, ReadLimits::default()).await;
    let before = (test.checksums().await, test.relations().await);

    let analytics = SqlAnalytics::<DynModel<Completion>>::sql_only(stores.clone());
    for sql in ATTACKS {
        let result = analytics.run(SqlAnalyticsArgs { question: None, sql: Some(sql.to_string()) }).await;
        match result {
            Err(ToolFailure::Correctable(message)) => assert!(message.contains("refused"), "{sql}: {message}"),
            other => panic!("{sql}: expected a correctable refusal, got {other:?}"),
        }
    }
    let find = FindAudience::new(stores.clone(), AudienceSession::default());
    for condition in GATE_ATTACKS {
        // Each form must be refused where its table makes the condition an attack (`total_spent > 100` is a valid
        // profile condition, and no event condition).
        let forms = [
            (ConditionTable::Events, serde_json::json!({"type": "event", "sql": condition})),
            (ConditionTable::Profiles, serde_json::json!({"type": "sql", "condition": condition})),
        ];
        let refused: Vec<_> =
            forms.into_iter().filter(|(table, _)| check_condition(condition, *table).is_err()).collect();
        assert!(!refused.is_empty(), "{condition} is no attack in any table");
        for (_, clause) in refused {
            let edit: Edit = serde_json::from_value(serde_json::json!({"include": [clause]})).unwrap();
            assert!(
                matches!(find.run(edit).await, Err(ToolFailure::Correctable(_))),
                "condition attack not refused: {condition}"
            );
        }
    }
    // The valid corpus really runs, so the guard's rendering is SQL PostgreSQL accepts.
    for sql in VALID {
        analytics
            .run(SqlAnalyticsArgs { question: None, sql: Some(sql.to_string()) })
            .await
            .unwrap_or_else(|e| panic!("valid query failed: {sql}\n{e}"));
    }

    assert_eq!(before, (test.checksums().await, test.relations().await), "a table or relation changed");
    test.drop().await;
}

/// Regression: a refused query was echoed back whole (megabytes of it) into the next model request.
#[tokio::test(flavor = "multi_thread")]
async fn refusals_through_the_tools_quote_only_a_short_prefix() {
    let test = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let stores = test.stores(dir.path(), false, ReadLimits::default()).await;
    let values = vec!["'DE'"; 1_000].join(", ");
    let analytics = SqlAnalytics::<DynModel<Completion>>::sql_only(stores.clone());
    let find = FindAudience::new(stores, AudienceSession::default());
    let too_long = format!("SELECT count(*) FROM customers WHERE country IN ({})", [values.as_str(); 10].join(", "));
    let unknown_column = format!("SELECT nope FROM customers WHERE country IN ({values})");
    for sql in [too_long, unknown_column] {
        let result = analytics.run(SqlAnalyticsArgs { question: None, sql: Some(sql) }).await;
        let Err(ToolFailure::Correctable(message)) = result else { panic!("expected a correctable refusal") };
        assert!(message.contains("The SQL was: SELECT"), "the start of the SQL is still quoted: {message}");
        assert!(message.len() < 400 && message.ends_with("..."), "{message}");
    }
    let condition = format!("country IN ({})", vec![values.as_str(); 300].join(", "));
    let edit: Edit =
        serde_json::from_value(serde_json::json!({"include": [{"type": "sql", "condition": condition}]})).unwrap();
    let Err(ToolFailure::Correctable(message)) = find.run(edit).await else { panic!("expected a correctable refusal") };
    assert!(message.len() < 400, "{message}");
    test.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_transaction_refuses_writes_without_the_guard() {
    let test = TestDb::new().await;
    let before = test.checksums().await;
    let writes = [
        "INSERT INTO customers VALUES (100, '100', 'a', 'b', 'c', 'PL', 1, 'red', NULL)",
        "UPDATE profiles SET total_spent = 0",
        "DELETE FROM events",
        "CREATE TABLE stolen (x int)",
        "SELECT * INTO stolen FROM customers",
    ];
    for sql in writes {
        let mut tx = test.db.begin_read_only(ReadLimits::default()).await.unwrap();
        let error = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql);
        let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        // 25006: read-only transaction; 42501: the reader role lacks the privilege.
        assert!(matches!(code.as_deref(), Some("25006") | Some("42501")), "{sql}: {error}");
        tx.rollback().await.unwrap();
    }
    // Regression: the transaction cannot be switched back to read-write (PostgreSQL allows that only before the
    // first query, and begin_read_only runs one), and even a superuser connection cannot RESET ROLE its way out.
    let mut tx = test.db.begin_read_only(ReadLimits::default()).await.unwrap();
    let error = sqlx::query("SET TRANSACTION READ WRITE").execute(&mut *tx).await.expect_err("read-write refused");
    let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("25001"), "{error}");
    tx.rollback().await.unwrap();
    let mut tx = test.db.begin_read_only(ReadLimits::default()).await.unwrap();
    sqlx::query("RESET ROLE").execute(&mut *tx).await.unwrap();
    let error = sqlx::query("DELETE FROM events").execute(&mut *tx).await.expect_err("still a read-only transaction");
    let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("25006"), "{error}");
    drop(tx);
    assert_eq!(before, test.checksums().await);
    test.drop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn statement_timeout_stops_a_sleep_without_the_guard() {
    let test = TestDb::new().await;
    let limits = ReadLimits { statement_timeout: Duration::from_millis(300), row_cap: 10, ..ReadLimits::default() };
    let mut tx = test.db.begin_read_only(limits).await.unwrap();
    let start = Instant::now();
    let error = sqlx::query("SELECT pg_sleep(10)").execute(&mut *tx).await.expect_err("the sleep must be cancelled");
    assert!(start.elapsed() < Duration::from_secs(5), "took {:?}", start.elapsed());
    let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{error}");
    // The tool reports the same cancellation as a correctable error.
    assert!(matches!(ToolFailure::from(error), ToolFailure::Correctable(m) if m.contains("timeout")));
    drop(tx);
    test.drop().await;
}
