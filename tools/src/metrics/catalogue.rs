//! The metrics catalogue: every measure and dimension the `metrics` tool offers, each with its exact SQL and its
//! definition in words. This is the one place a measure is defined: the tool's argument schema, the checks, the
//! compiled query, the answer's "how it was computed" and the README's table all follow it.
//!
//! A measure is computed at one of two grains:
//! - **customer** measures (customers, average age, churn rate) describe customers as their profiles are now: one
//!   row per customer of the customer table `c` (`customer_facts`, or `profiles`);
//! - **event** measures are computed from the events `e` of the period in two steps: first per customer (and per
//!   group of the dimensions) into the [`customer_event_facts`] of a row `f`, then over those rows. So a buyer, a
//!   viewer who added to the cart or a repeat buyer is counted once per group, however many events they have.
//!
//! Sales and returns are told apart by the one return rule of `schema` ([`is_sale`], [`is_return`]). Money is the
//! line total (`amount`: the file's own, else price x quantity), as spend is; a line without one counts 0.

use serde::{Deserialize, Serialize};

use crate::audience::definition::{EventType, Op, ProfileField, Rule};
use crate::schema::{CHURN_DAYS, SPEND_BANDS, is_return, is_sale, spend_band_sql};

/// What a measure is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grain {
    Customer,
    Event,
}

impl Grain {
    /// The grain in words, for messages.
    pub fn words(self) -> &'static str {
        match self {
            Self::Customer => "describes customers as they are now",
            Self::Event => "is computed from events",
        }
    }
}

/// How a measure's value reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A whole number of customers, events, lines or items.
    Count,
    /// A sum of line totals.
    Money,
    /// A mean (of money, or of years).
    Average,
    /// A share between 0 and 1.
    Rate,
}

impl Unit {
    /// Whether a missing value (no row in a period) is zero: true of counts and sums, not of means and shares.
    pub fn zero_when_missing(self) -> bool {
        matches!(self, Self::Count | Self::Money)
    }
}

/// A measure of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Measure {
    Customers,
    Buyers,
    ActiveCustomers,
    Events,
    Orders,
    Items,
    GrossRevenue,
    NetRevenue,
    Returns,
    ReturnedItems,
    AverageOrderValue,
    AverageSpendPerBuyer,
    OrdersPerBuyer,
    AverageAge,
    ChurnRate,
    ViewToCart,
    CartToPurchase,
    CartAbandonment,
    RepeatPurchaseRate,
    AveragePAlive,
    PredictedValue,
}

/// How the facts of several rows of one customer and group (rows of a rollup) combine into the fact of them all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Counts and money add up (a NULL sum, no such line, stays NULL until a row has one).
    Sum,
    /// A flag holds when it holds for any of the rows.
    Any,
}

/// A column of one customer's events in the period and group (a row `f`), which the event measures aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fact {
    pub name: &'static str,
    /// Its SQL over the events `e`.
    pub sql: String,
    pub combine: Combine,
    /// The SQL type a rollup stores it as.
    pub stored: &'static str,
}

impl Fact {
    /// Its SQL over rows `e` that hold it already (a rollup's, whose column has its name): the rows' sum, or
    /// whether any of them has it.
    pub fn combined(&self) -> String {
        match self.combine {
            Combine::Sum => format!("sum(e.{})", self.name),
            Combine::Any => format!("bool_or(e.{})", self.name),
        }
    }
}

/// The facts of a row `f`, computed per customer (and group) from the events `e` of the period.
pub fn customer_event_facts() -> Vec<Fact> {
    let purchase = "e.event_type = 'purchase'";
    let (sale, returned) = (is_sale("e.quantity"), is_return("e.quantity"));
    let sum = |name, sql: String, stored| Fact { name, sql, combine: Combine::Sum, stored };
    let any = |name, sql: &str| Fact { name, sql: sql.to_owned(), combine: Combine::Any, stored: "boolean" };
    vec![
        sum("events", "count(*)".to_owned(), "integer"),
        sum("orders", format!("count(*) FILTER (WHERE {purchase} AND {sale})"), "integer"),
        sum("items", format!("sum(e.quantity) FILTER (WHERE {purchase} AND {sale})"), "bigint"),
        sum("sales", format!("sum(e.amount) FILTER (WHERE {purchase} AND {sale})"), "numeric"),
        sum("return_lines", format!("count(*) FILTER (WHERE {purchase} AND {returned})"), "integer"),
        sum("returned_items", format!("-sum(e.quantity) FILTER (WHERE {purchase} AND {returned})"), "bigint"),
        // A file may write a return's own amount as positive or negative; either way it is money given back.
        sum("refunds", format!("sum(abs(e.amount)) FILTER (WHERE {purchase} AND {returned})"), "numeric"),
        any("viewed", "bool_or(e.event_type = 'view')"),
        any("carted", "bool_or(e.event_type = 'add_to_cart')"),
    ]
}

impl Measure {
    pub const ALL: [Measure; 21] = [
        Self::Customers,
        Self::Buyers,
        Self::ActiveCustomers,
        Self::Events,
        Self::Orders,
        Self::Items,
        Self::GrossRevenue,
        Self::NetRevenue,
        Self::Returns,
        Self::ReturnedItems,
        Self::AverageOrderValue,
        Self::AverageSpendPerBuyer,
        Self::OrdersPerBuyer,
        Self::AverageAge,
        Self::ChurnRate,
        Self::ViewToCart,
        Self::CartToPurchase,
        Self::CartAbandonment,
        Self::RepeatPurchaseRate,
        Self::AveragePAlive,
        Self::PredictedValue,
    ];

    /// The name a call uses (`net_revenue`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Buyers => "buyers",
            Self::ActiveCustomers => "active_customers",
            Self::Events => "events",
            Self::Orders => "orders",
            Self::Items => "items",
            Self::GrossRevenue => "gross_revenue",
            Self::NetRevenue => "net_revenue",
            Self::Returns => "returns",
            Self::ReturnedItems => "returned_items",
            Self::AverageOrderValue => "average_order_value",
            Self::AverageSpendPerBuyer => "average_spend_per_buyer",
            Self::OrdersPerBuyer => "orders_per_buyer",
            Self::AverageAge => "average_age",
            Self::ChurnRate => "churn_rate",
            Self::ViewToCart => "view_to_cart",
            Self::CartToPurchase => "cart_to_purchase",
            Self::CartAbandonment => "cart_abandonment",
            Self::RepeatPurchaseRate => "repeat_purchase_rate",
            Self::AveragePAlive => "average_p_alive",
            Self::PredictedValue => "predicted_value",
        }
    }

    /// The measure called `name`, if the catalogue has one.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|measure| measure.name() == name)
    }

    /// The measure as a person says it ("net revenue").
    pub fn label(self) -> &'static str {
        match self {
            Self::ViewToCart => "view→cart conversion",
            Self::CartToPurchase => "cart→purchase conversion",
            Self::RepeatPurchaseRate => "repeat-purchase rate",
            Self::ActiveCustomers => "active customers",
            Self::GrossRevenue => "gross revenue",
            Self::NetRevenue => "net revenue",
            Self::ReturnedItems => "returned items",
            Self::AverageOrderValue => "average order value",
            Self::AverageSpendPerBuyer => "average spend per buyer",
            Self::OrdersPerBuyer => "orders per buyer",
            Self::AverageAge => "average age",
            Self::ChurnRate => "churn rate",
            Self::CartAbandonment => "cart abandonment",
            Self::AveragePAlive => "average probability of being active",
            Self::PredictedValue => "predicted 12-month value",
            other => other.name(),
        }
    }

    /// Its definition in one line of words, what "label = definition" says.
    pub fn definition(self) -> String {
        match self {
            Self::Customers => "customers on file, each counted once".to_owned(),
            Self::Buyers => "customers with at least one purchase (a return is not one)".to_owned(),
            Self::ActiveCustomers => "customers with at least one event (view, cart addition or purchase)".to_owned(),
            Self::Events => "views, cart additions, purchase lines and returns".to_owned(),
            Self::Orders => "purchase lines with a positive quantity".to_owned(),
            Self::Items => "units bought: the quantities of the orders".to_owned(),
            Self::GrossRevenue => "the line totals of the orders, before returns".to_owned(),
            Self::NetRevenue => "purchases minus returns".to_owned(),
            Self::Returns => "purchase lines with a quantity of zero or less".to_owned(),
            Self::ReturnedItems => "units returned: the quantities of the returns".to_owned(),
            Self::AverageOrderValue => "gross revenue / orders (purchase lines)".to_owned(),
            Self::AverageSpendPerBuyer => "gross revenue / buyers".to_owned(),
            Self::OrdersPerBuyer => "orders (purchase lines) / buyers".to_owned(),
            Self::AverageAge => "the mean age of the customers whose age is known".to_owned(),
            Self::ChurnRate => format!(
                "churned buyers / buyers (churned: no purchase in the {CHURN_DAYS} days up to the data's last day)"
            ),
            Self::ViewToCart => "customers who viewed and added to the cart / customers who viewed".to_owned(),
            Self::CartToPurchase => {
                "customers who added to the cart and bought / customers who added to the cart".to_owned()
            }
            Self::CartAbandonment => {
                "customers who added to the cart and never bought / customers who added to the cart".to_owned()
            }
            Self::RepeatPurchaseRate => "buyers with two or more orders / buyers".to_owned(),
            Self::AveragePAlive => {
                "the mean p_alive (the purchase model's probability that a buyer is still active) of the buyers with \
                 a prediction"
                    .to_owned()
            }
            Self::PredictedValue => {
                "the sum of clv_12m (the purchase and spend models' discounted value of the next 12 months) of the \
                 customers with a prediction"
                    .to_owned()
            }
        }
    }

    pub fn grain(self) -> Grain {
        match self {
            Self::Customers | Self::AverageAge | Self::ChurnRate | Self::AveragePAlive | Self::PredictedValue => {
                Grain::Customer
            }
            _ => Grain::Event,
        }
    }

    /// Whether its value depends only on the rows with a sale (orders, items and their money, and customers
    /// counted by their orders): rows without one can be left out before the facts are grouped, which for a
    /// count of buyers over a window leaves a fraction of the rows.
    pub fn of_sales_only(self) -> bool {
        matches!(
            self,
            Self::Buyers
                | Self::Orders
                | Self::Items
                | Self::GrossRevenue
                | Self::AverageOrderValue
                | Self::AverageSpendPerBuyer
                | Self::OrdersPerBuyer
                | Self::RepeatPurchaseRate
        )
    }

    /// Whether its SQL reads the fact called `fact` of the rows `f`.
    pub fn reads(self, fact: &str) -> bool {
        let sql = self.sql();
        let column = format!("f.{fact}");
        sql.match_indices(&column)
            .any(|(at, _)| !sql[at + column.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
    }

    /// Whether its value is a function of the summed facts alone ([`Combine::Sum`]), so that rows which do not
    /// tell customers apart (a day's totals per product) give it: true of counts of events and money, not of counts
    /// of customers (buyers, a conversion rate).
    pub fn additive(self) -> bool {
        matches!(
            self,
            Self::Events
                | Self::Orders
                | Self::Items
                | Self::GrossRevenue
                | Self::NetRevenue
                | Self::Returns
                | Self::ReturnedItems
                | Self::AverageOrderValue
        )
    }

    pub fn unit(self) -> Unit {
        match self {
            Self::GrossRevenue | Self::NetRevenue | Self::PredictedValue => Unit::Money,
            Self::AverageOrderValue | Self::AverageSpendPerBuyer | Self::OrdersPerBuyer | Self::AverageAge => {
                Unit::Average
            }
            Self::ChurnRate | Self::ViewToCart | Self::CartToPurchase | Self::CartAbandonment => Unit::Rate,
            Self::RepeatPurchaseRate | Self::AveragePAlive => Unit::Rate,
            _ => Unit::Count,
        }
    }

    /// The exact SQL: an aggregate over the customers `c` (customer grain) or over the rows `f` of
    /// [`customer_event_facts`] (event grain).
    pub fn sql(self) -> &'static str {
        match self {
            Self::Customers => "count(*)",
            Self::AverageAge => "avg(c.age)",
            Self::ChurnRate => {
                "count(*) FILTER (WHERE c.churned)::numeric / nullif(count(*) FILTER (WHERE c.order_count > 0), 0)"
            }
            // Unknown (NULL) when no customer has a prediction: a model that was not fitted is not a value of 0.
            Self::AveragePAlive => "avg(c.p_alive)",
            Self::PredictedValue => "sum(c.clv_12m)",
            Self::ActiveCustomers => "count(*)",
            Self::Buyers => "count(*) FILTER (WHERE f.orders > 0)",
            Self::Events => "coalesce(sum(f.events), 0)",
            Self::Orders => "coalesce(sum(f.orders), 0)",
            Self::Items => "coalesce(sum(f.items), 0)",
            Self::GrossRevenue => "coalesce(sum(f.sales), 0)",
            Self::NetRevenue => "coalesce(sum(f.sales), 0) - coalesce(sum(f.refunds), 0)",
            Self::Returns => "coalesce(sum(f.return_lines), 0)",
            Self::ReturnedItems => "coalesce(sum(f.returned_items), 0)",
            Self::AverageOrderValue => "coalesce(sum(f.sales), 0) / nullif(sum(f.orders), 0)",
            Self::AverageSpendPerBuyer => "coalesce(sum(f.sales), 0) / nullif(count(*) FILTER (WHERE f.orders > 0), 0)",
            Self::OrdersPerBuyer => {
                "coalesce(sum(f.orders), 0)::numeric / nullif(count(*) FILTER (WHERE f.orders > 0), 0)"
            }
            Self::ViewToCart => {
                "count(*) FILTER (WHERE f.viewed AND f.carted)::numeric / nullif(count(*) FILTER (WHERE f.viewed), 0)"
            }
            Self::CartToPurchase => {
                "count(*) FILTER (WHERE f.carted AND f.orders > 0)::numeric \
                 / nullif(count(*) FILTER (WHERE f.carted), 0)"
            }
            Self::CartAbandonment => {
                "count(*) FILTER (WHERE f.carted AND f.orders = 0)::numeric \
                 / nullif(count(*) FILTER (WHERE f.carted), 0)"
            }
            Self::RepeatPurchaseRate => {
                "count(*) FILTER (WHERE f.orders >= 2)::numeric / nullif(count(*) FILTER (WHERE f.orders > 0), 0)"
            }
        }
    }

    /// Phrases that name this measure and no other, as a question writes them (lower case, words apart): when a
    /// question names one, the call measures it. Empty for measures that everyday words name loosely ("customers",
    /// "revenue", "returns" in "not counting returns").
    pub fn phrases(self) -> &'static [&'static str] {
        match self {
            Self::ChurnRate => &["churn rate", "churn"],
            Self::RepeatPurchaseRate => &[
                "repeat purchase",
                "repeat purchases",
                "repeat rate",
                "repeat buyers",
                "more than once",
                "bought again",
                "buy again",
                "purchased again",
                "ordered again",
            ],
            Self::CartAbandonment => &["abandon", "abandoned", "abandonment", "abandoning", "abandons"],
            Self::ViewToCart => &["view to cart", "views to cart", "view to cart conversion"],
            Self::CartToPurchase => &["cart to purchase", "cart to order", "carts to purchases"],
            Self::AverageOrderValue => &["average order value", "aov", "average order", "order value"],
            Self::AverageSpendPerBuyer => &["spend per buyer", "spent per buyer", "spending per buyer"],
            Self::OrdersPerBuyer => &[
                "orders per buyer",
                "purchases per buyer",
                "orders per customer",
                "purchases per customer",
                "purchases does a customer",
                "orders does a customer",
                "purchases does a buyer",
                "orders does a buyer",
            ],
            Self::ReturnedItems => &[
                "units returned",
                "units were returned",
                "items returned",
                "items were returned",
                "returned units",
                "returned items",
            ],
            Self::AverageAge => &["average age", "mean age", "median age", "how old"],
            Self::NetRevenue => &["net revenue", "net sales", "net", "after returns", "minus returns", "less returns"],
            Self::GrossRevenue => &[
                "gross revenue",
                "gross sales",
                "gross",
                "not counting returns",
                "excluding returns",
                "before returns",
                "without returns",
                "ignoring returns",
            ],
            Self::AveragePAlive => &["p alive", "probability of being active", "probability of being alive"],
            Self::PredictedValue => &["lifetime value", "clv", "predicted value"],
            _ => &[],
        }
    }

    /// The rate of a funnel step the question's events name, in order: viewers who added to the cart, customers who
    /// added to the cart and then bought (or, `negated`, never bought).
    pub fn funnel(from: EventType, to: EventType, negated: bool) -> Option<Measure> {
        match (from, to, negated) {
            (EventType::View, EventType::AddToCart, false) => Some(Self::ViewToCart),
            (EventType::AddToCart, EventType::Purchase, false) => Some(Self::CartToPurchase),
            (EventType::AddToCart, EventType::Purchase, true) => Some(Self::CartAbandonment),
            _ => None,
        }
    }

    /// For a rate, the count of the customers it counts on top, as a count measure and the profile clause that
    /// picks them: "how many churned customers?" asks for the churned customers, not for the churn rate. A rate
    /// over a period's events has none (a profile clause holds for all time).
    pub fn counted(self) -> Option<(Measure, Rule)> {
        let profile = |field, op, value| Rule::Profile { field, op, value };
        match self {
            Self::ChurnRate => Some((Self::Customers, profile(ProfileField::Churned, Op::Eq, true.into()))),
            Self::RepeatPurchaseRate => Some((Self::Customers, profile(ProfileField::OrderCount, Op::Gte, 2.into()))),
            _ => None,
        }
    }

    /// Whether `dimension` splits this measure into groups it has a value in: every measure takes the customer
    /// dimensions; only event measures take the event ones, and of those only events and active customers are
    /// split by event type (the others read given event types, so every other group would be empty).
    pub fn takes(self, dimension: Dimension) -> bool {
        match (self.grain(), dimension.source()) {
            (_, Source::Customer) => true,
            (Grain::Customer, Source::Event) => false,
            (Grain::Event, Source::Event) => {
                dimension != Dimension::EventType || matches!(self, Self::Events | Self::ActiveCustomers)
            }
        }
    }
}

/// Where a dimension's value comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The customer `c`.
    Customer,
    /// The event `e`.
    Event,
}

/// A dimension of the catalogue: what a breakdown or a series groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    Country,
    Segment,
    AgeBand,
    SpendBand,
    Product,
    Color,
    EventType,
    Day,
    Week,
    Month,
    Quarter,
}

/// The age bands of the `age_band` dimension, in order; the last is for an unknown age.
pub const AGE_BANDS: [&str; 7] = ["under 25", "25-34", "35-44", "45-54", "55-64", "65 or more", "unknown"];

impl Dimension {
    pub const ALL: [Dimension; 11] = [
        Self::Country,
        Self::Segment,
        Self::AgeBand,
        Self::SpendBand,
        Self::Product,
        Self::Color,
        Self::EventType,
        Self::Day,
        Self::Week,
        Self::Month,
        Self::Quarter,
    ];

    /// The name a call uses (`age_band`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Country => "country",
            Self::Segment => "segment",
            Self::AgeBand => "age_band",
            Self::SpendBand => "spend_band",
            Self::Product => "product",
            Self::Color => "color",
            Self::EventType => "event_type",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Quarter => "quarter",
        }
    }

    /// The dimension called `name`, if the catalogue has one.
    pub fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|dimension| dimension.name() == name)
    }

    /// Words that name it in a question: a breakdown the question names no word of is not asked for.
    pub fn words(self) -> &'static [&'static str] {
        match self {
            Self::Country => &["country", "countries", "market", "markets", "nation", "nations"],
            Self::Segment => &["segment", "segments"],
            Self::AgeBand => &["age", "ages", "band", "bands", "old", "young", "older", "younger"],
            Self::SpendBand => &["band", "bands", "spenders", "spending"],
            Self::Product => {
                &["product", "products", "item", "items", "category", "categories", "sells", "selling", "seller"]
            }
            Self::Color => &["color", "colors", "colour", "colours"],
            Self::EventType => &["type", "types", "kind", "kinds"],
            Self::Day => &["day", "days", "daily"],
            Self::Week => &["week", "weeks", "weekly"],
            Self::Month => &["month", "months", "monthly"],
            Self::Quarter => &["quarter", "quarters", "quarterly"],
        }
    }

    /// The nouns for one of its groups and for several ("country", "countries"): what a question ranks ("which
    /// country has the most customers?"). Empty for a dimension with no such noun of its own.
    pub fn nouns(self) -> (&'static [&'static str], &'static [&'static str]) {
        match self {
            Self::Country => (&["country", "market", "nation"], &["countries", "markets", "nations"]),
            Self::Segment => (&["segment"], &["segments"]),
            Self::AgeBand => (&["age"], &["ages"]),
            Self::SpendBand => (&[], &[]),
            Self::Product => (&["product", "item", "category"], &["products", "items", "categories"]),
            Self::Color => (&["color", "colour"], &["colors", "colours"]),
            Self::EventType => (&[], &[]),
            Self::Day => (&["day"], &["days"]),
            Self::Week => (&["week"], &["weeks"]),
            Self::Month => (&["month"], &["months"]),
            Self::Quarter => (&["quarter"], &["quarters"]),
        }
    }

    /// What its values are, in words.
    pub fn definition(self) -> String {
        match self {
            Self::Country => "the customer's country (ISO code; unknown when not given)".to_owned(),
            Self::Segment => "the customer's segment (VIP Loyalty, Churn Recovery, Standard Promo)".to_owned(),
            Self::AgeBand => format!("the customer's age in bands: {}", AGE_BANDS.join(", ")),
            Self::SpendBand => format!("the customer's total spent in bands: {}", SPEND_BANDS.join(", ")),
            Self::Product => "the event's product (unknown when not given)".to_owned(),
            Self::Color => "the event's colour (unknown when not given)".to_owned(),
            Self::EventType => "the event's type: view, add_to_cart or purchase".to_owned(),
            Self::Day => "the UTC day of the event (YYYY-MM-DD)".to_owned(),
            Self::Week => "the ISO week of the event, Monday to Sunday, UTC (YYYY-Www)".to_owned(),
            Self::Month => "the UTC month of the event (YYYY-MM)".to_owned(),
            Self::Quarter => "the UTC quarter of the event (YYYY-Qn)".to_owned(),
        }
    }

    pub fn source(self) -> Source {
        match self {
            Self::Country | Self::Segment | Self::AgeBand | Self::SpendBand => Source::Customer,
            _ => Source::Event,
        }
    }

    /// Whether it is a period of the event's time (a series).
    pub fn is_time(self) -> bool {
        matches!(self, Self::Day | Self::Week | Self::Month | Self::Quarter)
    }

    /// The SQL of the value groups are formed and ordered by: text, a band number or a day. `day` is the UTC day of
    /// the row `e` as a timestamp without time zone (`rollups::Rows::day`).
    pub fn key_sql(self, day: &str) -> String {
        let period = |unit: &str| format!("date_trunc('{unit}', {day})::date");
        match self {
            Self::Country => "coalesce(c.country, 'unknown')".to_owned(),
            Self::Segment => "coalesce(c.segment, 'unknown')".to_owned(),
            Self::AgeBand => "CASE WHEN c.age IS NULL THEN 6 WHEN c.age < 25 THEN 0 WHEN c.age < 35 THEN 1 \
                              WHEN c.age < 45 THEN 2 WHEN c.age < 55 THEN 3 WHEN c.age < 65 THEN 4 ELSE 5 END"
                .to_owned(),
            Self::SpendBand => spend_band_sql("c.total_spent"),
            Self::Product => "coalesce(e.product, 'unknown')".to_owned(),
            Self::Color => "coalesce(e.color, 'unknown')".to_owned(),
            Self::EventType => "e.event_type".to_owned(),
            Self::Day => format!("{day}::date"),
            Self::Week => period("week"),
            Self::Month => period("month"),
            Self::Quarter => period("quarter"),
        }
    }

    /// The SQL of the value shown for the group whose key is the column `key`.
    pub fn label_sql(self, key: &str) -> String {
        let bands = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|name| format!("'{name}'")).collect();
            format!("(ARRAY[{}])[{key} + 1]", names.join(", "))
        };
        match self {
            Self::AgeBand => bands(&AGE_BANDS),
            Self::SpendBand => bands(&SPEND_BANDS),
            Self::Day => format!("to_char({key}, 'YYYY-MM-DD')"),
            Self::Week => format!("to_char({key}, 'IYYY-\"W\"IW')"),
            Self::Month => format!("to_char({key}, 'YYYY-MM')"),
            Self::Quarter => format!("to_char({key}, 'YYYY-\"Q\"Q')"),
            Self::Country | Self::Segment | Self::Product | Self::Color | Self::EventType => key.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_read_back() {
        for measure in Measure::ALL {
            assert_eq!(Measure::named(measure.name()), Some(measure));
            assert_eq!(serde_json::to_value(measure).unwrap(), measure.name(), "serde spells it as the catalogue");
            assert!(!measure.definition().is_empty() && !measure.sql().is_empty());
        }
        for dimension in Dimension::ALL {
            assert_eq!(Dimension::named(dimension.name()), Some(dimension));
            assert_eq!(serde_json::to_value(dimension).unwrap(), dimension.name());
        }
        let measures: std::collections::HashSet<&str> = Measure::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(measures.len(), Measure::ALL.len());
        // A measure and a dimension may both be named in `order_by`, so no name is both.
        assert!(Dimension::ALL.iter().all(|d| !measures.contains(d.name())));
    }

    /// Each event measure reads only the per-customer facts `f`, each customer measure only the customer `c`.
    #[test]
    fn measures_read_their_grain_only() {
        let facts: Vec<&str> = customer_event_facts().iter().map(|fact| fact.name).collect();
        for measure in Measure::ALL {
            let sql = measure.sql();
            match measure.grain() {
                Grain::Customer => assert!(!sql.contains("f.") && !sql.contains("e."), "{sql}"),
                Grain::Event => {
                    assert!(!sql.contains("c.") && !sql.contains("e."), "{sql}");
                    for column in sql.split("f.").skip(1) {
                        let name: String = column.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                        assert!(facts.contains(&name.as_str()), "{}: f.{name}", measure.name());
                    }
                }
            }
        }
    }

    /// An additive measure reads summed facts only and counts no rows: a row of a day's totals is not a customer.
    #[test]
    fn additive_measures_read_summed_facts_only() {
        let facts = customer_event_facts();
        for measure in Measure::ALL.into_iter().filter(|measure| measure.additive()) {
            let sql = measure.sql();
            assert_eq!(measure.grain(), Grain::Event, "{}", measure.name());
            assert!(!sql.contains("count("), "{}: {sql}", measure.name());
            for fact in facts.iter().filter(|fact| measure.reads(fact.name)) {
                assert_eq!(fact.combine, Combine::Sum, "{} reads {}", measure.name(), fact.name);
            }
        }
        for measure in Measure::ALL.into_iter().filter(|measure| measure.grain() == Grain::Event && !measure.additive())
        {
            let sql = measure.sql();
            let reads_a_flag =
                facts.iter().any(|fact| fact.combine == Combine::Any && sql.contains(&format!("f.{}", fact.name)));
            assert!(sql.contains("count(") || reads_a_flag, "{} could be additive: {sql}", measure.name());
        }
    }

    /// A measure of sales alone reads only the facts of sales, and counts only customers with an order: a row
    /// without a sale changes none of them.
    #[test]
    fn measures_of_sales_read_nothing_else() {
        for measure in Measure::ALL.into_iter().filter(|measure| measure.of_sales_only()) {
            let sql = measure.sql();
            for fact in customer_event_facts() {
                let of_sales = ["orders", "items", "sales"].contains(&fact.name);
                assert!(of_sales || !measure.reads(fact.name), "{} reads {}", measure.name(), fact.name);
            }
            for (at, _) in sql.match_indices("count(*)") {
                assert!(sql[at..].starts_with("count(*) FILTER (WHERE f.orders"), "{}: {sql}", measure.name());
            }
        }
    }

    /// The README documents every measure and dimension with the catalogue's own words.
    #[test]
    fn the_readme_documents_every_measure_and_dimension() {
        let readme = include_str!("../../../README.md");
        for measure in Measure::ALL {
            let line = format!("| `{}` | {} |", measure.name(), measure.definition());
            assert!(readme.contains(&line), "the README lacks the line {line}");
        }
        for dimension in Dimension::ALL {
            let line = format!("| `{}` | {} |", dimension.name(), dimension.definition());
            assert!(readme.contains(&line), "the README lacks the line {line}");
        }
    }

    #[test]
    fn the_return_rule_comes_from_the_schema() {
        let facts = customer_event_facts();
        let sales = &facts.iter().find(|fact| fact.name == "sales").unwrap().sql;
        assert!(sales.contains(&is_sale("e.quantity")), "{sales}");
        let refunds = &facts.iter().find(|fact| fact.name == "refunds").unwrap().sql;
        assert!(refunds.contains(&is_return("e.quantity")), "{refunds}");
    }
}
