//! Parses model-written SQL before anything runs it, and allows only a small, read-only subset.
//!
//! The guard is an allow-list over sqlparser's AST (PostgreSQL dialect): every statement, clause,
//! table factor, expression kind, operator, function and cast type must be listed here, so syntax
//! it does not know is refused rather than passed through. What runs is the guard's own rendering
//! of the checked AST, not the model's text, so PostgreSQL never sees anything the guard did not parse.
//!
//! The guard is the first of three layers: the statement then runs in a `READ ONLY` transaction
//! as the SELECT-only reader role with a statement timeout (`Db::begin_read_only`). Refusals are
//! one clear sentence, shown to the model so it can correct itself.
//!
//! Nothing the model sends may crash the process. Size and shape are therefore judged from the token stream,
//! before any AST exists: the text's length, how deeply groups nest and how many operators chain along one
//! path. An AST is built only for input within those bounds, so parsing it, walking it (the checker),
//! rendering it (`Display`) and dropping it (a recursive `Drop` of boxed expressions) all recurse a bounded
//! number of levels, on a stack of the guard's own that is sized for them (see [`GUARD_STACK_BYTES`]).

use std::collections::HashSet;

use sqlparser::ast::{
    ArrayElemTypeDef, BinaryOperator, CeilFloorKind, Cte, DataType, Distinct, Expr, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr, Ident, InTarget, Join, JoinConstraint,
    JoinOperator, LimitClause, ObjectName, ObjectNamePart, OrderBy, OrderByExpr, OrderByKind, Query, Select,
    SelectFlavor, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor,
    TableWithJoins, UnaryOperator, Value, WildcardAdditionalOptions, WindowFrameBound, WindowType,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};

use crate::schema::{EVENTS, PROFILES, TABLES, TableSpec};

/// Functions model SQL may call. None of them reads files, sleeps, talks to the network or changes settings.
pub const ALLOWED_FUNCTIONS: &[&str] = &[
    // aggregates
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "bool_and",
    "bool_or",
    "every",
    "array_agg",
    "string_agg",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "corr",
    // window functions
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    // scalars
    "round",
    "trunc",
    "ceil",
    "ceiling",
    "floor",
    "abs",
    "sqrt",
    "power",
    "ln",
    "log",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "concat",
    "concat_ws",
    "substr",
    "split_part",
    "replace",
    "btrim",
    "ltrim",
    "rtrim",
    "left",
    "right",
    "to_char",
    "date_trunc",
    "date_part",
    "extract",
    "age",
    "now",
    "current_date",
    "current_timestamp",
    "make_interval",
    "array_length",
    "array_position",
    "array_to_string",
    "cardinality",
    "unnest",
    "width_bucket",
];

/// Longest clause condition accepted, in characters. A condition is a WHERE-clause fragment, typically under 300
/// characters; 4,000 still fits an IN list of several hundred values, and anything longer is not a condition a
/// model means to write (and would be echoed into every later request of the conversation).
pub const MAX_CONDITION_CHARS: usize = 4_000;

/// Longest analytics SQL accepted, in characters. The text-to-SQL call may answer with at most 800 tokens (about
/// 3,200 characters), so 10,000 leaves room for SQL passed directly while refusing megabytes of it.
pub const MAX_ANALYTICS_SQL_CHARS: usize = 10_000;

/// How deeply parentheses, brackets and CASE ... END may nest. Ordinary model SQL nests under 8 levels
/// (`round(avg(coalesce(x, 0)), 2)` is 3); every level is a few frames of recursion in the parser and the checker.
pub const MAX_NESTING: usize = 20;

/// How many operators and keywords may chain along one path of the syntax tree, counting the groups around
/// them (see [`TreeShape::of`]). `a OR b OR c` is a left-deep tree as deep as the chain is long, and recursing
/// over thousands of levels overflows a thread's stack; 200 is about 100 OR-ed comparisons, several times
/// what an ordinary WHERE clause chains, and a longer list of alternatives is better written as IN (...).
pub const MAX_CHAIN: usize = 200;

/// sqlparser's recursion limit: its default, named so an upgrade cannot loosen it silently. Input within
/// [`MAX_NESTING`] and [`MAX_CHAIN`] reaches it only through a long unary chain (`- - - ... x`) or subqueries
/// nested about 15 deep; its error is reported as a nesting refusal.
const PARSER_RECURSION_LIMIT: usize = 50;

/// The stack the guard parses, checks, renders and drops an AST on, whichever thread calls it. A debug build of
/// sqlparser spends about 75 KiB of stack per level of its recursion (a subquery level about 150 KiB), so input
/// near [`PARSER_RECURSION_LIMIT`] needs about 4 MiB: more than a 2 MiB tokio worker has, and more per level
/// than the 128 KiB of room sqlparser's own stack growth (`recursive-protection`) checks for. The pages are
/// reserved, not committed, so only what a check touches costs memory.
const GUARD_STACK_BYTES: usize = 16 * 1024 * 1024;

/// At most this many characters of the model's own text are quoted back in a refusal: enough to recognise
/// the statement or name, without resending a long input to the model.
const ECHO_CHARS: usize = 120;

/// Cast and literal types model SQL may use (`x::date`, `DATE '2024-01-01'`).
fn allowed_type(data_type: &DataType) -> bool {
    match data_type {
        DataType::SmallInt(_)
        | DataType::Int(_)
        | DataType::Int2(_)
        | DataType::Int4(_)
        | DataType::Int8(_)
        | DataType::Integer(_)
        | DataType::BigInt(_)
        | DataType::Numeric(_)
        | DataType::Decimal(_)
        | DataType::Dec(_)
        | DataType::Float(_)
        | DataType::Float4
        | DataType::Float8
        | DataType::Real
        | DataType::Double(_)
        | DataType::DoublePrecision
        | DataType::Bool
        | DataType::Boolean
        | DataType::Date
        | DataType::Time(..)
        | DataType::Timestamp(..)
        | DataType::Interval { .. }
        | DataType::Text
        | DataType::Varchar(_)
        | DataType::Char(_)
        | DataType::Character(_)
        | DataType::CharacterVarying(_)
        | DataType::CharVarying(_) => true,
        DataType::Array(
            ArrayElemTypeDef::AngleBracket(inner)
            | ArrayElemTypeDef::SquareBracket(inner, _)
            | ArrayElemTypeDef::Parenthesis(inner),
        ) => allowed_type(inner),
        // PostgreSQL spellings sqlparser keeps as names; `regclass`, `regproc` and friends are not here on purpose.
        DataType::Custom(name, modifiers) => {
            modifiers.is_empty()
                && single_name(name).is_some_and(|n| matches!(n.as_str(), "timestamptz" | "timetz" | "float" | "int"))
        }
        _ => false,
    }
}

/// Why the guard refused a statement: one sentence for the model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SQL refused: {0}")]
pub struct Refusal(pub String);

type Checked<T> = Result<T, Refusal>;

fn refuse<T>(reason: impl Into<String>) -> Checked<T> {
    Err(Refusal(reason.into()))
}

/// Checks an analytics query and returns the SQL to run: the guard's rendering of the one SELECT.
pub fn check_analytics(sql: &str) -> Checked<String> {
    let sql = lexical_check(sql, Mode::Analytics)?;
    on_guard_stack(|| checked_query(sql))
}

/// The part of [`check_analytics`] that builds, walks, renders and drops an AST.
fn checked_query(sql: &str) -> Checked<String> {
    let dialect = PostgreSqlDialect {};
    let statements = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| parse_refusal(Mode::Analytics, e))?;
    let [statement] = statements.as_slice() else {
        return refuse(format!("exactly one statement is allowed, found {}", statements.len()));
    };
    let Statement::Query(query) = statement else {
        return refuse(format!(
            "only a SELECT query is allowed, not `{}`",
            excerpt(&leading_words(&statement.to_string()))
        ));
    };
    let mut checker = Checker::new(Mode::Analytics);
    checker.query(query)?;
    checker.check_identifiers()?;
    Ok(query.to_string())
}

/// The table an audience clause's condition reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionTable {
    /// A condition on one event (`Event::sql`).
    Events,
    /// A condition on one customer's profile (`Rule::Sql`).
    Profiles,
}

impl ConditionTable {
    fn spec(self) -> &'static TableSpec {
        match self {
            Self::Events => &EVENTS,
            Self::Profiles => &PROFILES,
        }
    }
}

/// Checks a clause condition: one boolean expression over the bare column names of one table, without
/// subqueries. Returns the condition as the guard renders it.
pub fn check_condition(condition: &str, table: ConditionTable) -> Checked<String> {
    let mode = Mode::Condition(table);
    let condition = lexical_check(condition, mode)?;
    on_guard_stack(|| checked_condition(condition, mode))
}

/// The part of [`check_condition`] that builds, walks, renders and drops an AST.
fn checked_condition(condition: &str, mode: Mode) -> Checked<String> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .try_with_sql(condition)
        .map_err(|e| parse_refusal(mode, e))?;
    let expr = parser.parse_expr().map_err(|e| parse_refusal(mode, e))?;
    if parser.peek_token().token != Token::EOF {
        return refuse("the condition must be exactly one boolean expression (nothing after it)");
    }
    let mut checker = Checker::new(mode);
    checker.expr(&expr)?;
    checker.check_identifiers()?;
    Ok(expr.to_string())
}

/// Runs `check` on a fresh stack of [`GUARD_STACK_BYTES`]; everything it builds must be dropped inside it.
fn on_guard_stack<T>(check: impl FnOnce() -> T) -> T {
    stacker::grow(GUARD_STACK_BYTES, check)
}

/// Checks the raw text before anything is parsed: its length, no NUL characters, no comments, no statement
/// separators (one trailing `;` in a query is dropped), no non-ASCII characters outside string literals (look-alike
/// letters and invisible spaces), and a shape within [`MAX_NESTING`] and [`MAX_CHAIN`].
fn lexical_check(sql: &str, mode: Mode) -> Checked<&str> {
    let noun = mode.noun();
    let length = sql.chars().count();
    if length > mode.max_chars() {
        return refuse(format!(
            "the {noun} is {length} characters long; at most {} are allowed: write a shorter one (use IN (...) \
             for a list of values, BETWEEN for a range)",
            mode.max_chars()
        ));
    }
    // PostgreSQL's wire protocol ends the query text at a NUL and its text types cannot hold one, so a NUL would
    // break the connection rather than fail the statement. Every other character is valid in a UTF-8 database.
    if sql.contains('\0') {
        return refuse("NUL characters are not allowed, not even in string literals");
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize()
        .or_else(|e| refuse(format!("the {noun} does not tokenize: {}", excerpt(&e.to_string()))))?;
    let last_significant = tokens.iter().rposition(|t| !matches!(t, Token::Whitespace(_)));
    let mut text = sql;
    for (index, token) in tokens.iter().enumerate() {
        match token {
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => {
                return refuse("comments are not allowed");
            }
            Token::SemiColon => {
                if !(mode == Mode::Analytics && Some(index) == last_significant) {
                    return refuse("`;` is not allowed: send exactly one statement");
                }
                text = sql.trim_end().trim_end_matches(';');
            }
            token => match string_literal(token) {
                // An escape such as `U&'\0000'` spells a NUL without one in the text.
                Some(text) if text.contains('\0') => {
                    return refuse("NUL characters are not allowed, not even in string literals");
                }
                Some(_) => {}
                None if !token.to_string().is_ascii() => {
                    return refuse("non-ASCII characters are allowed only inside string literals");
                }
                None => {}
            },
        }
    }
    if text.trim().is_empty() {
        return refuse(format!("the {noun} is empty"));
    }
    let shape = TreeShape::of(&tokens);
    if shape.nesting > MAX_NESTING {
        return refuse(format!(
            "the {noun} nests parentheses, brackets and CASE more than {MAX_NESTING} levels deep; \
             write a flatter expression"
        ));
    }
    if shape.depth > MAX_CHAIN {
        return refuse(format!(
            "the {noun} chains more than {MAX_CHAIN} operators in one expression (such as a long OR chain); \
             use IN (...) for a list of values, BETWEEN for a range, or fewer conditions"
        ));
    }
    Ok(text)
}

/// How the syntax tree of a text will be shaped, measured from its tokens before it is parsed.
struct TreeShape {
    /// The deepest nesting of `(`, `[`, `{` and CASE ... END.
    nesting: usize,
    /// An upper bound on the depth of the tree, in operators, keywords and groups.
    depth: usize,
}

impl TreeShape {
    /// Every level of an expression tree is an operator or keyword token (`OR`, `>`, `::`, `NOT`, `IS`, ...) or
    /// a group (a call's or subquery's parentheses, brackets, CASE), never a bare name or literal. Items of a
    /// list (commas; WHEN, THEN and ELSE in a CASE) are siblings, so the deepest path through a group is its set
    /// operations plus its deepest item: that item's operators plus the deepest group inside it. Counting every
    /// keyword over-estimates (FROM, WHERE, AS and BY each count one), which only makes the bound safer.
    fn of(tokens: &[Token]) -> Self {
        let mut open: Vec<Group> = Vec::new();
        let mut current = Group::default();
        let mut nesting = 0;
        for token in tokens {
            let keyword = match token {
                Token::Word(word) => Some(word.keyword),
                _ => None,
            };
            match (token, keyword) {
                (Token::LParen | Token::LBracket | Token::LBrace, _) | (_, Some(Keyword::CASE)) => {
                    // The group is itself one level of the item it is in (a call, a nested expression, a CASE).
                    current.item_operators += 1;
                    let inner = Group { case: keyword.is_some(), ..Group::default() };
                    open.push(std::mem::replace(&mut current, inner));
                    nesting = nesting.max(open.len());
                }
                // A CASE closes only with END and a bracket only with a bracket; a mismatch is the parser's to refuse.
                (Token::RParen | Token::RBracket | Token::RBrace, _) if !current.case && !open.is_empty() => {
                    Group::close(&mut open, &mut current)
                }
                (_, Some(Keyword::END)) if current.case => Group::close(&mut open, &mut current),
                (_, Some(Keyword::WHEN | Keyword::THEN | Keyword::ELSE)) if current.case => current.end_item(),
                (_, Some(Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT)) => current.set_operations += 1,
                (Token::Comma, _) => current.end_item(),
                (Token::Whitespace(_) | Token::Number(..) | Token::Placeholder(_), _)
                | (Token::Word(_), Some(Keyword::NoKeyword)) => {}
                (token, _) if string_literal(token).is_some() => {}
                _ => current.item_operators += 1,
            }
        }
        // Unclosed groups are the parser's to refuse; they still count towards the depth.
        while !open.is_empty() {
            Group::close(&mut open, &mut current);
        }
        Self { nesting, depth: current.depth() }
    }
}

/// A group being measured by [`TreeShape::of`]: `(`, `[`, `{` or CASE ... END, or the whole text.
#[derive(Default)]
struct Group {
    case: bool,
    /// UNION, INTERSECT and EXCEPT: they chain whole SELECTs, so commas inside those do not end the chain.
    set_operations: usize,
    /// Operators and keywords in the current comma-separated item.
    item_operators: usize,
    /// The deepest group closed inside the current item.
    item_child_depth: usize,
    /// The deepest item seen so far.
    deepest_item: usize,
}

impl Group {
    fn end_item(&mut self) {
        self.deepest_item = self.deepest_item.max(self.item_operators + self.item_child_depth);
        self.item_operators = 0;
        self.item_child_depth = 0;
    }

    fn depth(mut self) -> usize {
        self.end_item();
        self.set_operations + self.deepest_item
    }

    /// Ends the innermost open group, `current`, and continues measuring the group around it.
    fn close(open: &mut Vec<Group>, current: &mut Group) {
        if let Some(outer) = open.pop() {
            let inner = std::mem::replace(current, outer);
            current.item_child_depth = current.item_child_depth.max(inner.depth());
        }
    }
}

/// The refusal for a parser error; hitting the recursion limit is a nesting problem, said as such.
fn parse_refusal(mode: Mode, error: ParserError) -> Refusal {
    match error {
        ParserError::RecursionLimitExceeded => Refusal(format!(
            "the {} nests too deeply (operators such as NOT or - applied many times over, or subqueries inside \
             subqueries); write a flatter expression",
            mode.noun()
        )),
        other => Refusal(format!("the {} does not parse: {}", mode.noun(), excerpt(&other.to_string()))),
    }
}

/// The text of a string literal token, as the tokenizer unescaped it.
fn string_literal(token: &Token) -> Option<&str> {
    match token {
        Token::SingleQuotedString(text)
        | Token::EscapedStringLiteral(text)
        | Token::NationalStringLiteral(text)
        | Token::UnicodeStringLiteral(text) => Some(text),
        Token::DollarQuotedString(dollar) => Some(&dollar.value),
        _ => None,
    }
}

fn leading_words(sql: &str) -> String {
    sql.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => Some(ident.value.to_lowercase()),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A full SELECT over customers, events and profiles.
    Analytics,
    /// One expression over one table's bare columns, no subqueries.
    Condition(ConditionTable),
}

impl Mode {
    /// What refusals call the model's text.
    fn noun(self) -> &'static str {
        match self {
            Mode::Analytics => "SQL",
            Mode::Condition(_) => "condition",
        }
    }

    fn max_chars(self) -> usize {
        match self {
            Mode::Analytics => MAX_ANALYTICS_SQL_CHARS,
            Mode::Condition(_) => MAX_CONDITION_CHARS,
        }
    }
}

struct Checker {
    mode: Mode,
    /// Names a bare identifier may use: the allowed tables' columns and table names, plus aliases the query defines.
    names: HashSet<String>,
    /// Identifiers seen, checked against `names` once every alias is known.
    used: Vec<String>,
    /// CTE names visible at the current point, innermost scope last.
    cte_scopes: Vec<Vec<String>>,
}

impl Checker {
    fn new(mode: Mode) -> Self {
        let mut names = HashSet::new();
        match mode {
            Mode::Analytics => {
                for table in &TABLES {
                    names.insert(table.name.to_owned());
                    names.extend(table.columns().into_iter().map(str::to_owned));
                }
            }
            // Bare columns only: the compiled query gives the table an alias of its own.
            Mode::Condition(table) => names.extend(table.spec().columns().into_iter().map(str::to_owned)),
        }
        Self { mode, names, used: Vec::new(), cte_scopes: Vec::new() }
    }

    fn check_identifiers(&self) -> Checked<()> {
        match self.used.iter().find(|name| !self.names.contains(*name)) {
            Some(name) => refuse(format!(
                "unknown column or table `{}`; use only the columns of {}",
                excerpt(name),
                match self.mode {
                    Mode::Analytics => "customers, events and profiles",
                    Mode::Condition(table) => table.spec().name,
                }
            )),
            None => Ok(()),
        }
    }

    fn define(&mut self, ident: &Ident) {
        self.names.insert(ident.value.to_lowercase());
    }

    fn define_alias(&mut self, alias: &Option<TableAlias>) {
        if let Some(alias) = alias {
            self.define(&alias.name);
            for column in &alias.columns {
                self.define(&column.name);
            }
        }
    }

    fn use_ident(&mut self, ident: &Ident) {
        self.used.push(ident.value.to_lowercase());
    }

    fn subqueries_allowed(&self) -> Checked<()> {
        match self.mode {
            Mode::Analytics => Ok(()),
            Mode::Condition(_) => refuse("subqueries are not allowed in a condition"),
        }
    }

    fn query(&mut self, query: &Query) -> Checked<()> {
        let Query {
            with,
            body,
            order_by,
            limit_clause,
            fetch,
            locks,
            for_clause,
            settings,
            format_clause,
            pipe_operators,
        } = query;
        if !locks.is_empty() {
            return refuse("locking clauses (FOR UPDATE / FOR SHARE) are not allowed");
        }
        if for_clause.is_some() || settings.is_some() || format_clause.is_some() || !pipe_operators.is_empty() {
            return refuse("only plain PostgreSQL SELECT syntax is allowed");
        }
        self.cte_scopes.push(Vec::new());
        let result = self.query_parts(with.as_ref(), body, order_by.as_ref(), limit_clause.as_ref(), fetch.as_ref());
        self.cte_scopes.pop();
        result
    }

    fn query_parts(
        &mut self,
        with: Option<&sqlparser::ast::With>,
        body: &SetExpr,
        order_by: Option<&OrderBy>,
        limit_clause: Option<&LimitClause>,
        fetch: Option<&sqlparser::ast::Fetch>,
    ) -> Checked<()> {
        if let Some(with) = with {
            if with.recursive {
                return refuse("WITH RECURSIVE is not allowed");
            }
            // A non-recursive CTE sees only the CTEs before it; a later name in its own body would
            // resolve to a real table of that name (e.g. a system view), so it is added only afterwards.
            for cte in &with.cte_tables {
                self.cte(cte)?;
                if let Some(scope) = self.cte_scopes.last_mut() {
                    scope.push(cte.alias.name.value.to_lowercase());
                }
            }
        }
        self.set_expr(body)?;
        if let Some(order_by) = order_by {
            self.order_by(order_by)?;
        }
        match limit_clause {
            None => {}
            Some(LimitClause::LimitOffset { limit, offset, limit_by }) => {
                if !limit_by.is_empty() {
                    return refuse("LIMIT BY is not allowed");
                }
                if let Some(limit) = limit {
                    self.expr(limit)?;
                }
                if let Some(offset) = offset {
                    self.expr(&offset.value)?;
                }
            }
            Some(LimitClause::OffsetCommaLimit { .. }) => return refuse("use LIMIT n OFFSET m"),
        }
        if let Some(fetch) = fetch
            && let Some(quantity) = &fetch.quantity
        {
            self.expr(quantity)?;
        }
        Ok(())
    }

    fn cte(&mut self, cte: &Cte) -> Checked<()> {
        if cte.from.is_some() {
            return refuse("only plain PostgreSQL WITH syntax is allowed");
        }
        let name = cte.alias.name.value.to_lowercase();
        if name.starts_with("pg_") {
            return refuse(format!("the name `{}` is reserved", excerpt(&name)));
        }
        self.define_alias(&Some(cte.alias.clone()));
        self.query(&cte.query)
    }

    fn set_expr(&mut self, body: &SetExpr) -> Checked<()> {
        match body {
            SetExpr::Select(select) => self.select(select),
            SetExpr::Query(query) => self.query(query),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left)?;
                self.set_expr(right)
            }
            SetExpr::Values(values) => {
                for row in &values.rows {
                    self.exprs(row.iter())?;
                }
                Ok(())
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                refuse("data-modifying statements are not allowed")
            }
            SetExpr::Table(_) => refuse("use SELECT ... FROM instead of TABLE"),
        }
    }

    fn select(&mut self, select: &Select) -> Checked<()> {
        if select.into.is_some() {
            return refuse("SELECT INTO is not allowed (it creates a table)");
        }
        let plain = select.select_modifiers.is_none()
            && select.top.is_none()
            && select.exclude.is_none()
            && select.lateral_views.is_empty()
            && select.prewhere.is_none()
            && select.connect_by.is_empty()
            && select.cluster_by.is_empty()
            && select.distribute_by.is_empty()
            && select.sort_by.is_empty()
            && select.qualify.is_none()
            && select.value_table_mode.is_none()
            && select.optimizer_hints.is_empty()
            && matches!(select.flavor, SelectFlavor::Standard);
        if !plain {
            return refuse("only plain PostgreSQL SELECT syntax is allowed");
        }
        if !select.named_window.is_empty() {
            return refuse("named WINDOW clauses are not allowed; write OVER (...) inline");
        }
        // FROM first: it defines the aliases the other clauses use.
        for table in &select.from {
            self.table_with_joins(table)?;
        }
        if let Some(Distinct::On(exprs)) = &select.distinct {
            self.exprs(exprs.iter())?;
        }
        for item in &select.projection {
            self.select_item(item)?;
        }
        if let Some(selection) = &select.selection {
            self.expr(selection)?;
        }
        match &select.group_by {
            GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => self.exprs(exprs.iter())?,
            _ => return refuse("only GROUP BY <expressions> is allowed"),
        }
        if let Some(having) = &select.having {
            self.expr(having)?;
        }
        Ok(())
    }

    fn select_item(&mut self, item: &SelectItem) -> Checked<()> {
        match item {
            SelectItem::UnnamedExpr(expr) => self.expr(expr),
            SelectItem::ExprWithAlias { expr, alias } => {
                self.define(alias);
                self.expr(expr)
            }
            SelectItem::Wildcard(options) => plain_wildcard(options),
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), options) => {
                plain_wildcard(options)?;
                self.qualifier(name)
            }
            _ => refuse("only expressions, `*` and `table.*` may be selected"),
        }
    }

    /// `name` in `name.*`: a table or alias.
    fn qualifier(&mut self, name: &ObjectName) -> Checked<()> {
        match name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => {
                self.use_ident(ident);
                Ok(())
            }
            _ => refuse(format!(
                "`{}.*` is not allowed; qualify with a table name or alias only",
                excerpt(&name.to_string())
            )),
        }
    }

    fn table_with_joins(&mut self, table: &TableWithJoins) -> Checked<()> {
        self.table_factor(&table.relation)?;
        for join in &table.joins {
            self.join(join)?;
        }
        Ok(())
    }

    fn join(&mut self, join: &Join) -> Checked<()> {
        if join.global {
            return refuse("only plain PostgreSQL JOIN syntax is allowed");
        }
        self.table_factor(&join.relation)?;
        let constraint = match &join.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c)
            | JoinOperator::CrossJoin(c) => c,
            _ => return refuse("only [INNER|LEFT|RIGHT|FULL|CROSS] JOIN is allowed"),
        };
        match constraint {
            JoinConstraint::On(expr) => self.expr(expr),
            JoinConstraint::Using(columns) => {
                for column in columns {
                    match column.0.as_slice() {
                        [ObjectNamePart::Identifier(ident)] => self.use_ident(ident),
                        _ => return refuse("USING takes plain column names"),
                    }
                }
                Ok(())
            }
            JoinConstraint::Natural | JoinConstraint::None => Ok(()),
            JoinConstraint::UsingAlias(..) => refuse("only plain PostgreSQL JOIN syntax is allowed"),
        }
    }

    fn table_factor(&mut self, factor: &TableFactor) -> Checked<()> {
        match factor {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_directives,
                inheritance: _,
            } => {
                if args.is_some() {
                    return refuse(format!(
                        "`{}(...)` in FROM is not allowed; only tables may be read",
                        excerpt(&name.to_string())
                    ));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_directives.is_empty()
                {
                    return refuse("only plain table references are allowed in FROM");
                }
                self.relation(name)?;
                self.define_alias(alias);
                Ok(())
            }
            TableFactor::Derived { lateral: _, subquery, alias, sample } => {
                if sample.is_some() {
                    return refuse("TABLESAMPLE is not allowed");
                }
                self.subqueries_allowed()?;
                self.query(subquery)?;
                self.define_alias(alias);
                Ok(())
            }
            TableFactor::NestedJoin { table_with_joins, alias } => {
                self.table_with_joins(table_with_joins)?;
                self.define_alias(alias);
                Ok(())
            }
            TableFactor::UNNEST { alias, array_exprs, with_offset, with_offset_alias, with_ordinality: _ } => {
                if *with_offset || with_offset_alias.is_some() {
                    return refuse("only plain UNNEST(...) is allowed");
                }
                self.exprs(array_exprs.iter())?;
                self.define_alias(alias);
                Ok(())
            }
            _ => refuse("only tables, subqueries, joins and UNNEST(...) are allowed in FROM"),
        }
    }

    /// A table name: one of our tables or a CTE in scope, never schema-qualified.
    fn relation(&mut self, name: &ObjectName) -> Checked<()> {
        let Some(table) = single_name(name) else {
            return refuse(format!(
                "`{}` is not allowed; read only the tables customers, events and profiles, without a schema",
                excerpt(&name.to_string())
            ));
        };
        if self.cte_scopes.iter().any(|scope| scope.contains(&table)) {
            return Ok(());
        }
        let allowed = match self.mode {
            Mode::Analytics => TABLES.iter().any(|t| t.name == table),
            Mode::Condition(_) => false,
        };
        if allowed {
            Ok(())
        } else {
            refuse(format!("table `{}` is not allowed; read only customers, events and profiles", excerpt(&table)))
        }
    }

    fn order_by(&mut self, order_by: &OrderBy) -> Checked<()> {
        if order_by.interpolate.is_some() {
            return refuse("only plain ORDER BY is allowed");
        }
        match &order_by.kind {
            OrderByKind::Expressions(exprs) => self.order_by_exprs(exprs),
            OrderByKind::All(_) => refuse("ORDER BY ALL is not allowed"),
        }
    }

    fn order_by_exprs(&mut self, exprs: &[OrderByExpr]) -> Checked<()> {
        for expr in exprs {
            if expr.with_fill.is_some() {
                return refuse("only plain ORDER BY is allowed");
            }
            self.expr(&expr.expr)?;
        }
        Ok(())
    }

    fn exprs<'e>(&mut self, exprs: impl Iterator<Item = &'e Expr>) -> Checked<()> {
        for expr in exprs {
            self.expr(expr)?;
        }
        Ok(())
    }

    fn expr(&mut self, expr: &Expr) -> Checked<()> {
        match expr {
            Expr::Identifier(ident) => {
                self.use_ident(ident);
                Ok(())
            }
            Expr::CompoundIdentifier(parts) => {
                if parts.len() > 2 {
                    return refuse("use `table.column`, without a schema");
                }
                for part in parts {
                    self.use_ident(part);
                }
                Ok(())
            }
            Expr::IsFalse(e)
            | Expr::IsNotFalse(e)
            | Expr::IsTrue(e)
            | Expr::IsNotTrue(e)
            | Expr::IsNull(e)
            | Expr::IsNotNull(e)
            | Expr::IsUnknown(e)
            | Expr::IsNotUnknown(e)
            | Expr::Nested(e) => self.expr(e),
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.expr(a)?;
                self.expr(b)
            }
            Expr::In { expr, target, negated: _, global } => {
                if *global {
                    return refuse("only plain PostgreSQL IN syntax is allowed");
                }
                self.expr(expr)?;
                match target {
                    InTarget::List(list) => self.exprs(list.iter()),
                    InTarget::Subquery(query) => {
                        self.subqueries_allowed()?;
                        self.query(query)
                    }
                    _ => refuse("use IN (list) or IN (SELECT ...)"),
                }
            }
            Expr::Between { expr, low, high, negated: _ } => {
                self.expr(expr)?;
                self.expr(low)?;
                self.expr(high)
            }
            Expr::BinaryOp { left, op, right } => {
                check_binary_operator(op)?;
                self.expr(left)?;
                self.expr(right)
            }
            Expr::Like { expr, pattern, escape_char, .. }
            | Expr::ILike { expr, pattern, escape_char, .. }
            | Expr::SimilarTo { expr, pattern, escape_char, .. } => {
                self.expr(expr)?;
                self.expr(pattern)?;
                if let Some(escape) = escape_char {
                    self.expr(escape)?;
                }
                Ok(())
            }
            Expr::AnyOp { left, compare_op, right, .. } | Expr::AllOp { left, compare_op, right } => {
                check_binary_operator(compare_op)?;
                self.expr(left)?;
                self.expr(right)
            }
            Expr::UnaryOp { op, expr } => match op {
                UnaryOperator::Not | UnaryOperator::Minus | UnaryOperator::Plus => self.expr(expr),
                _ => refuse(format!("operator `{}` is not allowed", excerpt(&op.to_string()))),
            },
            Expr::Cast { kind: _, expr, data_type, format } => {
                if format.is_some() {
                    return refuse("CAST ... FORMAT is not allowed");
                }
                check_type(data_type)?;
                self.expr(expr)
            }
            Expr::AtTimeZone { timestamp, time_zone } => {
                self.expr(timestamp)?;
                self.expr(time_zone)
            }
            Expr::Extract { field: _, syntax: _, expr } => self.expr(expr),
            Expr::Ceil { expr, field } | Expr::Floor { expr, field } => {
                if let CeilFloorKind::Scale(value) = field {
                    check_value(&value.value)?;
                }
                self.expr(expr)
            }
            Expr::Position { expr, r#in } => {
                self.expr(expr)?;
                self.expr(r#in)
            }
            Expr::Substring { expr, substring_from, substring_for, .. } => {
                self.expr(expr)?;
                self.exprs(substring_from.iter().chain(substring_for.iter()).map(|e| &**e))
            }
            Expr::Trim { expr, trim_what, trim_characters, .. } => {
                self.expr(expr)?;
                self.exprs(trim_what.iter().map(|e| &**e))?;
                self.exprs(trim_characters.iter().flatten())
            }
            Expr::Value(value) => check_value(&value.value),
            Expr::TypedString(typed) => {
                check_type(&typed.data_type)?;
                check_value(&typed.value.value)
            }
            Expr::Interval(interval) => self.expr(&interval.value),
            Expr::Function(function) => self.function(function),
            Expr::Case { operand, conditions, else_result, .. } => {
                self.exprs(operand.iter().map(|e| &**e))?;
                for case in conditions {
                    self.expr(&case.condition)?;
                    self.expr(&case.result)?;
                }
                self.exprs(else_result.iter().map(|e| &**e))
            }
            Expr::Exists { subquery, .. } | Expr::Subquery(subquery) => {
                self.subqueries_allowed()?;
                self.query(subquery)
            }
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => self.exprs(sets.iter().flatten()),
            Expr::Tuple(exprs) => self.exprs(exprs.iter()),
            Expr::Array(array) => self.exprs(array.elem.iter()),
            Expr::CompoundFieldAccess { root, access_chain } => {
                self.expr(root)?;
                for access in access_chain {
                    match access {
                        sqlparser::ast::AccessExpr::Subscript(sqlparser::ast::Subscript::Index { index }) => {
                            self.expr(index)?
                        }
                        sqlparser::ast::AccessExpr::Subscript(sqlparser::ast::Subscript::Slice {
                            lower_bound,
                            upper_bound,
                            stride: None,
                        }) => self.exprs(lower_bound.iter().chain(upper_bound.iter()))?,
                        _ => return refuse("only array subscripts `a[i]` and slices `a[i:j]` are allowed"),
                    }
                }
                Ok(())
            }
            Expr::Wildcard(_) => Ok(()),
            Expr::QualifiedWildcard(name, _) => self.qualifier(name),
            other => refuse(format!("the expression `{}` is not allowed", excerpt(&other.to_string()))),
        }
    }

    fn function(&mut self, function: &Function) -> Checked<()> {
        let Function { name, uses_odbc_syntax, parameters, args, within_group, filter, null_treatment, over } =
            function;
        let Some(function_name) = single_name(name) else {
            return refuse(format!(
                "function `{}` is not allowed; call functions without a schema",
                excerpt(&name.to_string())
            ));
        };
        if !ALLOWED_FUNCTIONS.contains(&function_name.as_str()) {
            return refuse(format!(
                "function `{}` is not allowed; use common aggregates, date, string and math functions",
                excerpt(&function_name)
            ));
        }
        if *uses_odbc_syntax || !matches!(parameters, FunctionArguments::None) || null_treatment.is_some() {
            return refuse("only plain PostgreSQL function-call syntax is allowed");
        }
        match args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(_) => return refuse("subqueries as function arguments are not allowed"),
            FunctionArguments::List(list) => {
                for arg in &list.args {
                    let FunctionArg::Unnamed(arg) = arg else {
                        return refuse("named function arguments are not allowed");
                    };
                    match arg {
                        FunctionArgExpr::Expr(expr) => self.expr(expr)?,
                        FunctionArgExpr::Wildcard => {}
                        FunctionArgExpr::QualifiedWildcard(name) => self.qualifier(name)?,
                        FunctionArgExpr::WildcardWithOptions(options) => plain_wildcard(options)?,
                    }
                }
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::OrderBy(exprs) => self.order_by_exprs(exprs)?,
                        _ => return refuse("only ORDER BY is allowed inside a function call"),
                    }
                }
            }
        }
        self.order_by_exprs(within_group)?;
        if let Some(filter) = filter {
            self.expr(filter)?;
        }
        match over {
            None => Ok(()),
            Some(WindowType::NamedWindow(_)) => refuse("named windows are not allowed; write OVER (...) inline"),
            Some(WindowType::WindowSpec(spec)) => {
                if spec.window_name.is_some() {
                    return refuse("named windows are not allowed; write OVER (...) inline");
                }
                self.exprs(spec.partition_by.iter())?;
                self.order_by_exprs(&spec.order_by)?;
                if let Some(frame) = &spec.window_frame {
                    for bound in std::iter::once(&frame.start_bound).chain(frame.end_bound.iter()) {
                        if let WindowFrameBound::Preceding(Some(e)) | WindowFrameBound::Following(Some(e)) = bound {
                            self.expr(e)?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn plain_wildcard(options: &WildcardAdditionalOptions) -> Checked<()> {
    let plain = options.opt_ilike.is_none()
        && options.opt_exclude.is_none()
        && options.opt_except.is_none()
        && options.opt_replace.is_none()
        && options.opt_rename.is_none()
        && options.opt_alias.is_none();
    if plain { Ok(()) } else { refuse("only a plain `*` is allowed") }
}

fn check_type(data_type: &DataType) -> Checked<()> {
    if allowed_type(data_type) {
        Ok(())
    } else {
        refuse(format!(
            "the type `{}` is not allowed; cast to numbers, text, booleans, dates or times",
            excerpt(&data_type.to_string())
        ))
    }
}

fn check_value(value: &Value) -> Checked<()> {
    match value {
        Value::Number(..)
        | Value::SingleQuotedString(_)
        | Value::EscapedStringLiteral(_)
        | Value::DollarQuotedString(_)
        | Value::NationalStringLiteral(_)
        | Value::Boolean(_)
        | Value::Null => Ok(()),
        Value::Placeholder(p) => {
            refuse(format!("parameter placeholders like `{}` are not allowed; inline the value", excerpt(p)))
        }
        other => refuse(format!("the literal `{}` is not allowed", excerpt(&other.to_string()))),
    }
}

fn check_binary_operator(op: &BinaryOperator) -> Checked<()> {
    use BinaryOperator as B;
    match op {
        B::Plus
        | B::Minus
        | B::Multiply
        | B::Divide
        | B::Modulo
        | B::StringConcat
        | B::Gt
        | B::Lt
        | B::GtEq
        | B::LtEq
        | B::Eq
        | B::NotEq
        | B::And
        | B::Or
        | B::PGExp
        | B::PGOverlap
        | B::PGRegexMatch
        | B::PGRegexIMatch
        | B::PGRegexNotMatch
        | B::PGRegexNotIMatch
        | B::PGLikeMatch
        | B::PGILikeMatch
        | B::PGNotLikeMatch
        | B::PGNotILikeMatch
        | B::PGStartsWith
        | B::AtArrow
        | B::ArrowAt => Ok(()),
        other => refuse(format!("operator `{}` is not allowed", excerpt(&other.to_string()))),
    }
}

/// The model's text as quoted in a refusal: one line, at most [`ECHO_CHARS`] characters.
pub fn excerpt(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(ECHO_CHARS) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}
