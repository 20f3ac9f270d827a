//! The data's vocabulary and the model-facing argument schema of `find_audience`, generated from the definition's
//! Rust types ([`ProfileField::ALL`], [`FieldKind`], [`Op`], [`EventType::ALL`]) and the values the data holds.
//!
//! A small model fills typed slots well only when it can see them: every clause kind is spelled out (a `oneOf` on
//! `type`), each profile field kind gets exactly the operators and value type it takes, and text values are
//! enums of what PostgreSQL holds (products, colours, countries, segments). llama.cpp turns the schema into a
//! grammar, which mishandles enums behind `$ref`, so everything is inlined. A vocabulary too large for an enum is
//! narrowed to the values grounding found in the question (see `grounding`).
//!
//! Architecture Invariant: no model-facing schema is written by hand. A clause field, profile field, operator or
//! event type added to the types appears here, or a test in this module fails.

use anyhow::{Context, Result};
use serde_json::{Map, Value, json};

use crate::audience::definition::{
    Clause, EventType, FieldKind, MAX_CLAUSES, MAX_INTENT_CHARS, MAX_LIMIT, MAX_VALUE_CHARS, Op, ProfileField, Rule,
};
use crate::audience::report::MAX_FIELDS;
use crate::db::Db;
use crate::schema::profile_fields;

/// Largest vocabulary offered whole as an enum; a larger one is narrowed to the values found in the question.
pub const ENUM_LIMIT: usize = 80;

/// The values the data holds for the fields clauses name, most common first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DataValues {
    pub products: Vec<String>,
    pub colors: Vec<String>,
    pub countries: Vec<String>,
    pub segments: Vec<String>,
}

/// Most values read per field: enough to ground any word a question uses, bounded for a catalogue of thousands.
pub const MAX_VALUES: usize = 5_000;

impl DataValues {
    /// Reads the distinct values from the ingested tables.
    pub async fn load(db: &Db) -> Result<Self> {
        let read = async |sql: String| -> Result<Vec<String>> {
            sqlx::query_scalar(&sql).fetch_all(&db.pool).await.with_context(|| format!("cannot read values: {sql}"))
        };
        let top = |column: &str, table: &str| {
            format!(
                "SELECT {column} FROM {table} WHERE {column} IS NOT NULL AND {column} <> '' \
                 GROUP BY {column} ORDER BY count(*) DESC, {column} LIMIT {MAX_VALUES}"
            )
        };
        let products = read(top("product", "events")).await?;
        let mut colors = read(top("color", "events")).await?;
        for color in read(top("favorite_color", "customers")).await? {
            if !colors.contains(&color) {
                colors.push(color);
            }
        }
        let countries = read(top("country", "customers")).await?;
        let segments = read(top("segment", "profiles")).await?;
        Ok(Self { products, colors, countries, segments })
    }

    /// The values of the profile field `field` takes, when it takes values from the data.
    pub fn of_field(&self, field: ProfileField) -> Option<&[String]> {
        match field {
            ProfileField::Country => Some(&self.countries),
            ProfileField::Segment => Some(&self.segments),
            ProfileField::FavoriteColor | ProfileField::PreferredColors => Some(&self.colors),
            ProfileField::Interests => Some(&self.products),
            _ => None,
        }
    }
}

/// Most products or colours one clause of the model's may list (the definition itself takes more).
const LISTED_IN_A_CLAUSE: usize = 6;
/// The longest window the model may set: ten years (the definition itself takes a century).
pub const MAX_WINDOW_DAYS: u32 = 3_660;

/// The values one question's schema offers: all of a small vocabulary, the grounded ones of a large one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Offered {
    pub products: Vec<String>,
    pub colors: Vec<String>,
    pub countries: Vec<String>,
    pub segments: Vec<String>,
}

impl Offered {
    /// For each vocabulary: every value when there are at most [`ENUM_LIMIT`], else the `grounded` ones.
    pub fn narrow(values: &DataValues, grounded: &DataValues) -> Self {
        let pick = |all: &[String], found: &[String]| -> Vec<String> {
            if all.len() <= ENUM_LIMIT { all.to_vec() } else { found.to_vec() }
        };
        Self {
            products: pick(&values.products, &grounded.products),
            colors: pick(&values.colors, &grounded.colors),
            countries: pick(&values.countries, &grounded.countries),
            segments: pick(&values.segments, &grounded.segments),
        }
    }

    fn of_field(&self, field: ProfileField) -> Option<&[String]> {
        match field {
            ProfileField::Country => Some(&self.countries),
            ProfileField::Segment => Some(&self.segments),
            ProfileField::FavoriteColor | ProfileField::PreferredColors => Some(&self.colors),
            ProfileField::Interests => Some(&self.products),
            _ => None,
        }
    }

    /// Whether every value `clause` names is one the schema offers.
    pub fn holds(&self, clause: &Clause) -> bool {
        match &clause.rule {
            Rule::Event { products, colors, .. } => {
                products.iter().all(|p| self.products.contains(p)) && colors.iter().all(|c| self.colors.contains(c))
            }
            Rule::Profile { field, value, .. } => {
                let Some(offered) = self.of_field(*field) else { return true };
                let texts: Vec<&str> = match value {
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    other => other.as_str().into_iter().collect(),
                };
                texts.iter().all(|text| offered.iter().any(|o| o == text))
            }
            Rule::Sql { .. } => true,
        }
    }
}

/// The JSON schema of an argument type, generated by schemars with every subschema inlined (llama.cpp's grammar
/// converter mishandles `$ref`) and without the meta keys a grammar has no use for.
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07().with(|s| s.inline_subschemas = true).into_generator();
    let mut schema = Value::from(generator.into_root_schema_for::<T>());
    if let Value::Object(object) = &mut schema {
        object.remove("$schema");
        object.remove("title");
    }
    schema
}

/// The serde name of a unit variant (`"add_to_cart"`, `">="`): the schema spells values as the types read them.
fn name_of<T: serde::Serialize>(value: T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// A calendar day, `YYYY-MM-DD` (an anchored pattern: llama.cpp's grammar converter needs `^...$`).
pub fn date_schema() -> Value {
    json!({"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"})
}

fn string_enum(values: &[String]) -> Value {
    json!({"type": "string", "enum": values})
}

/// The operators a field kind takes, in the order the schema lists them.
pub fn ops_for(kind: FieldKind) -> &'static [Op] {
    match kind {
        FieldKind::Number => &[Op::Eq, Op::Ne, Op::Gt, Op::Gte, Op::Lt, Op::Lte, Op::In],
        FieldKind::Text => &[Op::Eq, Op::Ne, Op::In],
        FieldKind::Bool => &[Op::Eq, Op::Ne],
        FieldKind::TextList => &[Op::Contains],
    }
}

/// The event clause: `type` first (llama.cpp keeps the schema's key order), then every field of
/// `Rule::Event` the model may fill. Products and colours are enums of the offered values, or left out when none
/// is offered (an empty enum cannot be satisfied).
fn event_clause(offered: &Offered) -> Value {
    let mut properties = Map::new();
    properties.insert("type".into(), json!({"const": "event"}));
    let types: Vec<String> = EventType::ALL.into_iter().map(name_of).collect();
    properties.insert("event_type".into(), string_enum(&types));
    // A question names a few products or colours; a small model left free lists the whole enum.
    for (name, values) in [("products", &offered.products), ("colors", &offered.colors)] {
        if !values.is_empty() {
            properties.insert(
                name.into(),
                json!({"type": "array", "items": string_enum(values), "minItems": 1, "maxItems": LISTED_IN_A_CLAUSE}),
            );
        }
    }
    for name in ["min_price", "max_price"] {
        properties.insert(name.into(), json!({"type": "number", "minimum": 0}));
    }
    properties.insert("within_days".into(), json!({"type": "integer", "minimum": 1, "maximum": MAX_WINDOW_DAYS}));
    for name in ["since", "until"] {
        properties.insert(name.into(), date_schema());
    }
    properties.insert("min_count".into(), json!({"type": "integer", "minimum": 1}));
    json!({"type": "object", "properties": properties, "required": ["type"]})
}

/// One profile clause form per field kind (and per field whose values come from the data), each with the
/// operators its kind takes and the value type they compare with.
fn profile_clauses(offered: &Offered) -> Vec<Value> {
    let clause = |fields: Vec<String>, ops: &[Op], value: Value| {
        let ops: Vec<String> = ops.iter().copied().map(name_of).collect();
        json!({
            "type": "object",
            "properties": {
                "type": {"const": "profile"},
                "field": string_enum(&fields),
                "op": string_enum(&ops),
                "value": value,
            },
            "required": ["type", "field", "op", "value"],
        })
    };
    let fields_of = |kind: FieldKind| -> Vec<ProfileField> {
        ProfileField::ALL
            .into_iter()
            .filter(|field| field.kind() == kind && offered.of_field(*field).is_none())
            .collect()
    };
    let names = |fields: Vec<ProfileField>| -> Vec<String> { fields.into_iter().map(name_of).collect() };
    let mut forms = Vec::new();
    let numbers = fields_of(FieldKind::Number);
    if !numbers.is_empty() {
        let value =
            json!({"anyOf": [{"type": "number"}, {"type": "array", "items": {"type": "number"}, "minItems": 1}]});
        forms.push(clause(names(numbers), ops_for(FieldKind::Number), value));
    }
    let bools = fields_of(FieldKind::Bool);
    if !bools.is_empty() {
        forms.push(clause(names(bools), ops_for(FieldKind::Bool), json!({"type": "boolean"})));
    }
    let free_text = fields_of(FieldKind::Text);
    if !free_text.is_empty() {
        let text = json!({"type": "string", "minLength": 1, "maxLength": MAX_VALUE_CHARS});
        let value = json!({"anyOf": [text, {"type": "array", "items": text, "minItems": 1}]});
        forms.push(clause(names(free_text), ops_for(FieldKind::Text), value));
    }
    for field in ProfileField::ALL {
        let Some(values) = offered.of_field(field) else { continue };
        // No value offered (a vocabulary too large and nothing grounded, or no data read): free text, checked
        // against the data by the tool.
        let one = if values.is_empty() {
            json!({"type": "string", "minLength": 1, "maxLength": MAX_VALUE_CHARS})
        } else {
            string_enum(values)
        };
        let value = match field.kind() {
            FieldKind::Text => json!({"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]}),
            _ => one,
        };
        forms.push(clause(vec![name_of(field)], ops_for(field.kind()), value));
    }
    forms
}

/// The schema of a list of clauses (`include`, `exclude`) offering `offered`'s values.
pub fn clause_list_schema(offered: &Offered) -> Value {
    let mut clauses = vec![event_clause(offered)];
    clauses.extend(profile_clauses(offered));
    json!({"type": "array", "items": {"oneOf": clauses}, "maxItems": CLAUSES_PER_LIST})
}

/// Most clauses one call adds to `include` (or to `exclude`). A question names a few conditions; a small model that
/// repeats a clause until its output budget ends (seen: 14 segment clauses) is cut off here by the grammar, in valid
/// JSON, instead of mid-value. A definition still grows to `MAX_CLAUSES` over refinements.
pub const CLAUSES_PER_LIST: usize = 6;
const _: () = assert!(2 * CLAUSES_PER_LIST <= MAX_CLAUSES, "one call's clauses must fit in a definition");

/// The JSON schema of a list of profile clauses only: `lookalike`'s filters on who may be found ("only in
/// Germany", "not VIP Loyalty"), which the whole clause grammar would make about 2,500 tokens longer in every
/// request's fixed prefix.
pub fn profile_clause_list_schema(offered: &Offered) -> Value {
    let clauses = profile_clauses(offered);
    json!({"type": "array", "items": {"oneOf": clauses}, "maxItems": CLAUSES_PER_LIST})
}

/// The JSON schema of `find_audience`'s arguments for one question (see the module doc).
///
/// `current` holds the ids of the current audience's clauses, when there is one: `remove` then names only those
/// ids, and `new` may start over; without an audience neither is offered (a small model otherwise invents ids to
/// remove from an audience that does not exist).
pub fn find_audience_schema(offered: &Offered, current: Option<&[String]>) -> Value {
    let clause_list = clause_list_schema(offered);
    // Every member carries its id: asked as a field it only repeats it.
    let fields: Vec<&str> = profile_fields().into_iter().filter(|field| *field != "customer_id").collect();
    let mut properties = Map::new();
    properties.insert("include".into(), clause_list.clone());
    properties.insert("exclude".into(), clause_list);
    properties.insert("intent".into(), json!({"type": "string", "maxLength": MAX_INTENT_CHARS}));
    properties.insert("limit".into(), json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}));
    // Capped, so that the grammar ends a list that would name every field (the 1.5B model asked for all 22, was told
    // "at most 10", and sent the same call again).
    let fields = json!({"type": "array", "items": {"type": "string", "enum": fields}, "maxItems": MAX_FIELDS});
    properties.insert("fields".into(), fields);
    // Last, because they change with every refinement: the servers' prompt caches keep everything before them.
    if let Some(ids) = current {
        if !ids.is_empty() {
            let remove = json!({"type": "array", "items": string_enum(ids), "maxItems": ids.len()});
            properties.insert("remove".into(), remove);
        }
        properties.insert("new".into(), json!({"type": "boolean"}));
    }
    json!({"type": "object", "properties": properties})
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use std::collections::BTreeSet;

    fn offered() -> Offered {
        Offered {
            products: vec!["socks".into(), "t_shirts".into()],
            colors: vec!["red".into()],
            countries: vec!["PL".into(), "GB".into()],
            segments: vec!["VIP Loyalty".into()],
        }
    }

    fn keys(value: &Value) -> BTreeSet<String> {
        value.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }

    /// Schema drift: an event clause with every field set serializes to exactly the keys the schema offers (the
    /// free `sql` condition aside: it is for `tool --args` users, not the model).
    #[test]
    fn the_event_clause_schema_has_every_field_of_the_type() {
        let rule = Rule::Event {
            event_type: Some(EventType::Purchase),
            products: vec!["socks".into()],
            colors: vec!["red".into()],
            min_price: Some(1.0),
            max_price: Some(2.0),
            within_days: Some(3),
            since: NaiveDate::from_ymd_opt(2026, 5, 1),
            until: NaiveDate::from_ymd_opt(2026, 5, 31),
            min_count: Some(4),
            sql: Some("true".into()),
        };
        let mut typed = keys(&serde_json::to_value(Clause { id: String::new(), rule }).unwrap());
        typed.remove("sql");
        let schema = find_audience_schema(&offered(), None);
        let event = &schema["properties"]["include"]["items"]["oneOf"][0];
        assert_eq!(keys(&event["properties"]), typed);
        let types: Vec<&str> =
            event["properties"]["event_type"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(types, ["view", "add_to_cart", "purchase"]);
    }

    /// Every profile field appears in exactly one clause form, with only operators its kind accepts, and every
    /// operator a kind accepts validates.
    #[test]
    fn every_profile_field_has_one_form_with_its_operators() {
        let schema = find_audience_schema(&offered(), None);
        let forms = schema["properties"]["include"]["items"]["oneOf"].as_array().unwrap();
        for field in ProfileField::ALL {
            let name = name_of(field);
            let holding: Vec<&Value> = forms
                .iter()
                .filter(|form| form["properties"]["field"]["enum"].as_array().is_some_and(|f| f.contains(&json!(name))))
                .collect();
            assert_eq!(holding.len(), 1, "{name} is in {} forms", holding.len());
            let ops: Vec<String> = holding[0]["properties"]["op"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|op| op.as_str().unwrap().to_owned())
                .collect();
            assert_eq!(ops, ops_for(field.kind()).iter().copied().map(name_of).collect::<Vec<_>>());
        }
        let country = forms.iter().find(|f| f["properties"]["field"]["enum"] == json!(["country"])).unwrap();
        assert_eq!(country["properties"]["value"]["anyOf"][0]["enum"], json!(["PL", "GB"]));
    }

    /// The grammar ends a `fields` list at the cap the tool lists, and never offers the id every member carries.
    #[test]
    fn the_fields_list_is_capped_and_leaves_out_the_id() {
        let schema = find_audience_schema(&offered(), None);
        let fields = &schema["properties"]["fields"];
        assert_eq!(fields["maxItems"], json!(MAX_FIELDS));
        let names = fields["items"]["enum"].as_array().unwrap();
        assert!(!names.contains(&json!("customer_id")) && names.contains(&json!("email")), "{names:?}");
    }

    /// Without an audience there is nothing to remove or start over from; with one, only its clause ids.
    #[test]
    fn remove_names_only_the_current_clauses() {
        let fresh = find_audience_schema(&offered(), None);
        assert!(fresh["properties"].get("remove").is_none() && fresh["properties"].get("new").is_none());
        let ids = ["c1".to_owned(), "c3".to_owned()];
        let refining = find_audience_schema(&offered(), Some(&ids));
        assert_eq!(refining["properties"]["remove"]["items"]["enum"], json!(["c1", "c3"]));
        assert_eq!(refining["properties"]["new"], json!({"type": "boolean"}));
    }

    #[test]
    fn large_vocabularies_are_narrowed_to_grounded_values_and_the_schema_has_no_refs() {
        let values = DataValues {
            products: (0..ENUM_LIMIT + 1).map(|i| format!("p{i}")).collect(),
            colors: vec!["red".into()],
            ..DataValues::default()
        };
        let grounded = DataValues { products: vec!["p7".into()], ..DataValues::default() };
        let offered = Offered::narrow(&values, &grounded);
        assert_eq!(offered.products, ["p7"]);
        assert_eq!(offered.colors, ["red"]);
        let text = find_audience_schema(&offered, None).to_string();
        assert!(!text.contains("$ref") && !text.contains("$defs"), "{text}");
        // Nothing grounded in a large vocabulary: the slot is left out rather than offered empty.
        let none = Offered::narrow(&values, &DataValues::default());
        let schema = find_audience_schema(&none, None);
        assert!(schema["properties"]["include"]["items"]["oneOf"][0]["properties"].get("products").is_none());
    }
}
