//! `audience generate`: a deterministic synthetic CRM + clickstream sample with hidden personas.
//!
//! Each customer gets a hidden persona that drives what they browse and buy; the persona is written only to
//! `labels.csv`, so evaluations can check whether the agent rediscovers it from behaviour alone:
//! - `luxury` (~12%): watches, jewelry, bags, perfume at high prices, black and gold; typically spends > 800.
//! - `bargain` (~25%): cheap socks and t-shirts, many views, few purchases.
//! - `sporty` (~22%): running gear, shoes, yoga wear.
//! - `fashion` (~25%): dresses, jeans, scarves, hats.
//! - `lapsed` (~16%): bought earlier, but nothing in the last 120+ days.
//!
//! About 2% of purchases are followed by a return (a purchase row with negative quantity).
//!
//! With a [`Lift`], a campaign's known effect is added on top: a chosen share of the given customers buy once more
//! between the campaign date and the end date (listed in `lifted.csv`), from a random stream of its own, so every
//! other row is exactly what the same seed writes without it. `audience measure` must find that effect.
//! The output depends only on the options: one seeded ChaCha8 stream, consumed in a fixed order. Memory is flat:
//! one customer's events at a time, streamed to buffered writers, so 1M customers / 50M events is fine.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub customers: u64,
    /// Mean number of events per customer.
    pub events_per_customer: u32,
    pub seed: u64,
    /// Events span the 365 days before this date.
    pub end_date: NaiveDate,
    pub out_dir: PathBuf,
    /// A campaign's known effect, added on top of the sample.
    pub lift: Option<Lift>,
}

/// Extra purchases that simulate a campaign that worked.
#[derive(Clone, Debug, PartialEq)]
pub struct Lift {
    /// The customers the campaign went to (their file ids).
    pub customers: HashSet<u64>,
    /// The share of them who buy once more because of it (0 < share <= 1).
    pub share: f64,
    /// The campaign date: the extra purchase falls between the start of this day and the end date.
    pub since: NaiveDate,
}

/// The seed of the lift's own stream is the sample's seed mixed with this, so the base stream stays untouched.
const LIFT_STREAM: u64 = 0x6c69_6674_6c69_6674;

/// What was written.
#[derive(Clone, Debug)]
pub struct GenerateReport {
    pub customers: u64,
    pub events: u64,
    pub customers_path: PathBuf,
    pub events_path: PathBuf,
    pub labels_path: PathBuf,
    /// With a lift: how many customers got the extra purchase, and the file listing them (`lifted.csv`).
    pub lifted: Option<(u64, PathBuf)>,
}

/// Header of `customers.csv`.
pub const CUSTOMERS_HEADER: &str = "customer_id,first_name,last_name,email,country,age,favorite_color,signup_date";
/// Header of `events.csv`.
pub const EVENTS_HEADER: &str = "event_id,customer_id,event_type,product,color,price,quantity,ts";
/// Header of `labels.csv`.
pub const LABELS_HEADER: &str = "customer_id,persona";

/// A product category: name and the everyday and luxury price ranges in cents.
struct Category {
    name: &'static str,
    everyday: (u32, u32),
    luxury: (u32, u32),
}

const CATEGORIES: &[Category] = &[
    Category { name: "socks", everyday: (300, 1500), luxury: (2000, 6000) },
    Category { name: "t_shirts", everyday: (800, 3500), luxury: (6000, 20000) },
    Category { name: "jeans", everyday: (3000, 12000), luxury: (15000, 45000) },
    Category { name: "dresses", everyday: (3500, 22000), luxury: (30000, 150000) },
    Category { name: "hats", everyday: (1200, 6000), luxury: (8000, 40000) },
    Category { name: "scarves", everyday: (1500, 9000), luxury: (15000, 60000) },
    Category { name: "shoes", everyday: (4500, 18000), luxury: (35000, 120000) },
    Category { name: "running_gear", everyday: (2000, 15000), luxury: (20000, 50000) },
    Category { name: "yoga_wear", everyday: (2500, 11000), luxury: (15000, 40000) },
    Category { name: "jackets", everyday: (6000, 30000), luxury: (50000, 250000) },
    Category { name: "sunglasses", everyday: (2000, 15000), luxury: (25000, 90000) },
    Category { name: "bags", everyday: (4000, 20000), luxury: (60000, 350000) },
    Category { name: "watches", everyday: (8000, 30000), luxury: (90000, 900000) },
    Category { name: "jewelry", everyday: (4000, 25000), luxury: (60000, 500000) },
    Category { name: "perfume", everyday: (3000, 9000), luxury: (12000, 45000) },
];

const COLORS: &[&str] = &[
    "black", "white", "gold", "silver", "red", "blue", "green", "pink", "navy", "beige", "grey", "yellow", "purple",
    "orange", "brown",
];

const FIRST_NAMES: &[&str] = &[
    "Anna",
    "Piotr",
    "Maria",
    "Jan",
    "Katarzyna",
    "Tomasz",
    "Emma",
    "Liam",
    "Olivia",
    "Noah",
    "Sophie",
    "Lukas",
    "Hannah",
    "Felix",
    "Mia",
    "Leon",
    "Chloe",
    "Hugo",
    "Lucia",
    "Mateo",
    "Giulia",
    "Marco",
    "Sanne",
    "Daan",
    "Elsa",
    "Oskar",
    "James",
    "Amelia",
    "Jack",
    "Isla",
    "Camille",
    "Louis",
    "Sofia",
    "Pablo",
    "Ingrid",
    "Erik",
    "Zofia",
    "Adam",
    "Laura",
    "David",
];

const LAST_NAMES: &[&str] = &[
    "Nowak",
    "Kowalski",
    "Wisniewska",
    "Muller",
    "Schmidt",
    "Schneider",
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Martin",
    "Bernard",
    "Dubois",
    "Garcia",
    "Martinez",
    "Lopez",
    "Rossi",
    "Russo",
    "Ferrari",
    "Jansen",
    "DeVries",
    "Bakker",
    "Andersson",
    "Johansson",
    "Karlsson",
    "Taylor",
    "Davies",
    "Evans",
    "Wilson",
    "Moreau",
    "Laurent",
    "Fischer",
    "Weber",
    "Wagner",
    "Novak",
    "Svoboda",
    "Lewandowski",
    "Zielinski",
    "Walker",
];

/// ISO-2 country and weight.
const COUNTRIES: &[(&str, u32)] = &[
    ("US", 20),
    ("DE", 16),
    ("PL", 14),
    ("GB", 14),
    ("FR", 10),
    ("ES", 7),
    ("IT", 7),
    ("NL", 5),
    ("SE", 4),
    ("CZ", 3),
];

/// A hidden persona and the behaviour it drives.
struct Persona {
    name: &'static str,
    weight: u32,
    /// Favourite categories and the chance that a session is about one of them.
    categories: &'static [&'static str],
    focus: f64,
    colors: &'static [&'static str],
    /// Chance that a session's colour is one of `colors`.
    color_focus: f64,
    luxury_prices: bool,
    /// Cheap personas buy from the bottom third of the everyday range.
    cheap: bool,
    max_views: u32,
    cart_chance: f64,
    buy_chance_after_cart: f64,
    /// Relative number of events; weights times these average to about 1.
    activity: f64,
    ages: (u32, u32),
    /// Last activity is at least this many days before the end date.
    quiet_days: i64,
    first_session_buys: bool,
}

const PERSONAS: &[Persona] = &[
    Persona {
        name: "luxury",
        weight: 12,
        categories: &["watches", "jewelry", "bags", "perfume"],
        focus: 0.85,
        colors: &["black", "gold"],
        color_focus: 0.8,
        luxury_prices: true,
        cheap: false,
        max_views: 2,
        cart_chance: 0.6,
        buy_chance_after_cart: 0.75,
        activity: 0.8,
        ages: (30, 68),
        quiet_days: 0,
        first_session_buys: true,
    },
    Persona {
        name: "bargain",
        weight: 25,
        categories: &["socks", "t_shirts"],
        focus: 0.75,
        colors: &["grey", "white", "blue", "black"],
        color_focus: 0.5,
        luxury_prices: false,
        cheap: true,
        max_views: 6,
        cart_chance: 0.2,
        buy_chance_after_cart: 0.4,
        activity: 1.3,
        ages: (18, 60),
        quiet_days: 0,
        first_session_buys: false,
    },
    Persona {
        name: "sporty",
        weight: 22,
        categories: &["running_gear", "shoes", "yoga_wear"],
        focus: 0.8,
        colors: &["blue", "red", "white", "black", "green"],
        color_focus: 0.7,
        luxury_prices: false,
        cheap: false,
        max_views: 3,
        cart_chance: 0.45,
        buy_chance_after_cart: 0.65,
        activity: 1.0,
        ages: (18, 50),
        quiet_days: 0,
        first_session_buys: false,
    },
    Persona {
        name: "fashion",
        weight: 25,
        categories: &["dresses", "jeans", "scarves", "hats"],
        focus: 0.8,
        colors: &["pink", "beige", "red", "navy", "white"],
        color_focus: 0.7,
        luxury_prices: false,
        cheap: false,
        max_views: 4,
        cart_chance: 0.45,
        buy_chance_after_cart: 0.6,
        activity: 1.0,
        ages: (18, 55),
        quiet_days: 0,
        first_session_buys: false,
    },
    Persona {
        name: "lapsed",
        weight: 16,
        categories: &["jackets", "shoes", "jeans", "sunglasses"],
        focus: 0.5,
        colors: &["black", "navy", "brown", "grey"],
        color_focus: 0.5,
        luxury_prices: false,
        cheap: false,
        max_views: 3,
        cart_chance: 0.5,
        buy_chance_after_cart: 0.7,
        activity: 0.6,
        ages: (22, 70),
        quiet_days: 120,
        first_session_buys: true,
    },
];

/// Chance that a purchase is followed by a return.
const RETURN_CHANCE: f64 = 0.02;

/// One generated event before it is written.
struct Row {
    event_type: &'static str,
    category: &'static str,
    color: &'static str,
    price_cents: u32,
    quantity: i32,
    ts: DateTime<Utc>,
}

/// Writes `customers.csv`, `events.csv` and `labels.csv` (customer_id,persona) into `opts.out_dir`.
pub fn generate(opts: &GenerateOptions) -> Result<GenerateReport> {
    if opts.customers == 0 {
        bail!("--customers must be at least 1");
    }
    if opts.events_per_customer == 0 {
        bail!("--events-per-customer must be at least 1");
    }
    if let Some(lift) = &opts.lift {
        if !(lift.share > 0.0 && lift.share <= 1.0) {
            bail!("--lift-share takes a share above 0 and at most 1, e.g. 0.2");
        }
        let first = opts.end_date - Duration::days(365);
        if lift.since >= opts.end_date || lift.since < first {
            bail!("--lift-since must fall in the sample's year, from {first} to the day before {}", opts.end_date);
        }
    }
    std::fs::create_dir_all(&opts.out_dir).with_context(|| format!("cannot create {}", opts.out_dir.display()))?;
    let customers_path = opts.out_dir.join("customers.csv");
    let events_path = opts.out_dir.join("events.csv");
    let labels_path = opts.out_dir.join("labels.csv");
    let mut customers_out = create(&customers_path)?;
    let mut events_out = create(&events_path)?;
    let mut labels_out = create(&labels_path)?;
    writeln!(customers_out, "{CUSTOMERS_HEADER}")?;
    writeln!(events_out, "{EVENTS_HEADER}")?;
    writeln!(labels_out, "{LABELS_HEADER}")?;

    let mut lifted_out = match &opts.lift {
        Some(_) => {
            let mut out = create(&opts.out_dir.join("lifted.csv"))?;
            writeln!(out, "customer_id")?;
            Some(out)
        }
        None => None,
    };
    let mut lifted = 0u64;
    let mut lift_rng = ChaCha8Rng::seed_from_u64(opts.seed ^ LIFT_STREAM);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let window_end = opts.end_date.and_time(NaiveTime::MIN).and_utc();
    let window_start = window_end - Duration::days(365);
    let mut event_id: u64 = 0;
    let mut rows = Vec::new();
    for customer_id in 1..=opts.customers {
        let persona = pick_weighted(&mut rng, PERSONAS, |p| p.weight);
        let last_allowed = if persona.quiet_days > 0 {
            window_end - Duration::days(persona.quiet_days + rng.random_range(0..60))
        } else {
            window_end
        };
        let target = customer_events(&mut rng, opts.events_per_customer, persona);
        customer_rows(&mut rng, persona, window_start, last_allowed, target, &mut rows);
        if let (Some(lift), Some(out)) = (&opts.lift, lifted_out.as_mut())
            && lift.customers.contains(&customer_id)
            && lift_rng.random_bool(lift.share)
        {
            let since = lift.since.and_time(NaiveTime::MIN).and_utc();
            rows.push(lift_purchase(&mut lift_rng, persona, since, window_end));
            rows.sort_by_key(|r| r.ts);
            writeln!(out, "{customer_id}")?;
            lifted += 1;
        }

        let first_name = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
        let last_name = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
        let country = pick_weighted(&mut rng, COUNTRIES, |c| c.1).0;
        let age = rng.random_range(persona.ages.0..=persona.ages.1);
        let favorite_color = if rng.random_bool(0.6) {
            persona.colors[rng.random_range(0..persona.colors.len())]
        } else {
            COLORS[rng.random_range(0..COLORS.len())]
        };
        let first_seen = rows.first().map_or(window_start, |r| r.ts);
        let signup = (first_seen - Duration::days(rng.random_range(0..400))).date_naive();
        writeln!(
            customers_out,
            "{customer_id},{first_name},{last_name},{}.{}{customer_id}@example.com,{country},{age},{favorite_color},{}",
            first_name.to_lowercase(),
            last_name.to_lowercase(),
            signup.format("%Y-%m-%d"),
        )?;
        writeln!(labels_out, "{customer_id},{}", persona.name)?;
        for row in &rows {
            event_id += 1;
            writeln!(
                events_out,
                "{event_id},{customer_id},{},{},{},{}.{:02},{},{}",
                row.event_type,
                row.category,
                row.color,
                row.price_cents / 100,
                row.price_cents % 100,
                row.quantity,
                row.ts.format("%Y-%m-%dT%H:%M:%SZ"),
            )?;
        }
    }
    let lifted_path = opts.out_dir.join("lifted.csv");
    let mut outputs = vec![(customers_out, &customers_path), (events_out, &events_path), (labels_out, &labels_path)];
    if let Some(out) = lifted_out {
        outputs.push((out, &lifted_path));
    }
    for (out, path) in outputs {
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|file| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let lifted = opts.lift.as_ref().map(|_| (lifted, lifted_path));
    Ok(GenerateReport { customers: opts.customers, events: event_id, customers_path, events_path, labels_path, lifted })
}

/// The campaign's extra purchase: one of the persona's categories, in its colours and price range, at a time
/// between `since` and an hour before `end`.
fn lift_purchase(rng: &mut ChaCha8Rng, persona: &Persona, since: DateTime<Utc>, end: DateTime<Utc>) -> Row {
    let name = persona.categories[rng.random_range(0..persona.categories.len())];
    let category = CATEGORIES.iter().find(|c| c.name == name).unwrap_or(&CATEGORIES[0]);
    let (low, high) = if persona.luxury_prices { category.luxury } else { category.everyday };
    let span = (end - since).num_seconds().saturating_sub(3600).max(1);
    Row {
        event_type: "purchase",
        category: category.name,
        color: persona.colors[rng.random_range(0..persona.colors.len())],
        price_cents: rng.random_range(low..=high),
        quantity: 1,
        ts: since + Duration::seconds(rng.random_range(0..span)),
    }
}

fn create(path: &Path) -> Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

fn pick_weighted<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T], weight: impl Fn(&T) -> u32) -> &'a T {
    let total: u32 = items.iter().map(&weight).sum();
    let mut point = rng.random_range(0..total);
    for item in items {
        let w = weight(item);
        if point < w {
            return item;
        }
        point -= w;
    }
    &items[items.len() - 1]
}

/// This customer's number of events: the mean scaled by persona activity and a random factor, at least 1.
fn customer_events(rng: &mut ChaCha8Rng, mean: u32, persona: &Persona) -> usize {
    let factor: f64 = rng.random_range(0.3..1.7);
    ((f64::from(mean) * persona.activity * factor).round() as usize).max(1)
}

/// Fills `rows` with one customer's events, sorted by time: browsing sessions of views, maybe an add to cart,
/// maybe a purchase and rarely a return, all between `start` and `end`.
fn customer_rows(
    rng: &mut ChaCha8Rng,
    persona: &Persona,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    target: usize,
    rows: &mut Vec<Row>,
) {
    rows.clear();
    let span = (end - start).num_seconds().max(1);
    let mut session = 0;
    while rows.len() < target {
        let category = if rng.random_bool(persona.focus) {
            let name = persona.categories[rng.random_range(0..persona.categories.len())];
            CATEGORIES.iter().find(|c| c.name == name).unwrap_or(&CATEGORIES[0])
        } else {
            &CATEGORIES[rng.random_range(0..CATEGORIES.len())]
        };
        let color = if rng.random_bool(persona.color_focus) {
            persona.colors[rng.random_range(0..persona.colors.len())]
        } else {
            COLORS[rng.random_range(0..COLORS.len())]
        };
        let (low, high) = match (persona.luxury_prices, persona.cheap) {
            (true, _) => category.luxury,
            (false, true) => {
                (category.everyday.0, category.everyday.0 + (category.everyday.1 - category.everyday.0) / 3)
            }
            (false, false) => category.everyday,
        };
        let price_cents = rng.random_range(low..=high);
        // Sessions end an hour before the window closes, so their later steps stay inside it.
        let mut ts = start + Duration::seconds(rng.random_range(0..span.saturating_sub(3600).max(1)));
        let views = rng.random_range(1..=persona.max_views);
        for _ in 0..views {
            rows.push(Row { event_type: "view", category: category.name, color, price_cents, quantity: 1, ts });
            ts += Duration::seconds(rng.random_range(20..300));
        }
        let buys = persona.first_session_buys && session == 0;
        if buys || rng.random_bool(persona.cart_chance) {
            let quantity = if rng.random_bool(0.85) { 1 } else { 2 };
            rows.push(Row { event_type: "add_to_cart", category: category.name, color, price_cents, quantity, ts });
            ts += Duration::seconds(rng.random_range(30..600));
            if buys || rng.random_bool(persona.buy_chance_after_cart) {
                rows.push(Row { event_type: "purchase", category: category.name, color, price_cents, quantity, ts });
                if rng.random_bool(RETURN_CHANCE) {
                    let returned = (ts + Duration::days(rng.random_range(2..21))).min(end - Duration::seconds(1));
                    let row = Row {
                        event_type: "purchase",
                        category: category.name,
                        color,
                        price_cents,
                        quantity: -quantity,
                        ts: returned.max(ts),
                    };
                    rows.push(row);
                }
            }
        }
        session += 1;
    }
    rows.sort_by_key(|r| r.ts);
    // A later session may overshoot the target; the cut keeps every return after its purchase.
    rows.truncate(target);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persona_weights_sum_to_100_and_activity_averages_about_1() {
        let total: u32 = PERSONAS.iter().map(|p| p.weight).sum();
        assert_eq!(total, 100);
        let mean: f64 = PERSONAS.iter().map(|p| f64::from(p.weight) * p.activity).sum::<f64>() / 100.0;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
        for persona in PERSONAS {
            for name in persona.categories {
                assert!(CATEGORIES.iter().any(|c| c.name == *name), "{name} is not a category");
            }
        }
    }
}
