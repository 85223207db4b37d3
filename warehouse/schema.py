"""The warehouse schema, as an ordered list of forward migrations.

Table and column names are a contract: later layers (scoring, statistics,
reports) and users' own SQL rely on them.  Never edit a migration that has
shipped; append a new one.  ``docs/warehouse.md`` documents every column.

Keys
----
* ``participant_key`` and ``response_id`` are surrogate BIGINT keys assigned at
  ingest.  They are stable for the life of a warehouse file; scores refer to
  ``response_id`` so joins stay cheap at 26 million responses.
* The natural key of a participant is ``(study, experiment, participant)``.
* Offsets ``char_start``/``char_end`` are 0-based Python string (Unicode code
  point) offsets into ``transcripts.text`` of the response *without* its
  ``<<``/``>>`` markers: ``text[char_start:char_end] == responses.text``.
"""

from __future__ import annotations

# The 11 task domains of the Psych-201 study, in the column order of
# experiment_domains.csv.
DOMAINS: tuple[str, ...] = (
    "Reinforcement Learning",
    "Risky Choice",
    "Intertemporal Choice",
    "Economic Games",
    "Moral Judgment",
    "Reasoning",
    "Categorization",
    "Memory",
    "Cognitive Control",
    "Psycholinguistics",
    "Psychophysics",
)

# The columns of ``models`` that say what a model is (family, generation, size,
# post-training and base): what analyses, reports and the registry share.
MODEL_FACTS = (
    "family",
    "generation",
    "generation_order",
    "n_params",
    "post_training",
    "base_model",
)

MIGRATION_1 = """
CREATE TABLE schema_version (
    version     INTEGER NOT NULL,
    applied_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE ingest_id_seq START 1;
CREATE TABLE ingests (
    ingest_id            INTEGER PRIMARY KEY,
    source_path          VARCHAR NOT NULL,
    member               VARCHAR,           -- file inside a zip, when the source is a zip
    study                VARCHAR NOT NULL,
    content_sha256       VARCHAR NOT NULL,  -- of the (decompressed) jsonl bytes / parquet file
    started_at           TIMESTAMP NOT NULL,
    finished_at          TIMESTAMP,
    n_lines              BIGINT,
    n_participants_added BIGINT,
    n_participants_unchanged BIGINT,
    n_participants_changed   BIGINT,
    n_responses_added    BIGINT,
    n_rejected           BIGINT,
    status               VARCHAR NOT NULL,  -- 'complete' | 'skipped-same-content'
    psystats_version     VARCHAR NOT NULL
);

-- Participants whose content differs from what the warehouse already holds
-- under the same (study, experiment, participant) key.
CREATE TABLE ingest_conflicts (
    ingest_id    INTEGER NOT NULL,
    study        VARCHAR NOT NULL,
    experiment   VARCHAR NOT NULL,
    participant  VARCHAR NOT NULL,
    line         BIGINT NOT NULL,
    old_sha256   VARCHAR NOT NULL,
    new_sha256   VARCHAR NOT NULL,
    action       VARCHAR NOT NULL       -- 'kept-old' | 'replaced'
);

CREATE TABLE studies (
    study        VARCHAR PRIMARY KEY,
    source_path  VARCHAR,
    first_ingested_at TIMESTAMP
);

-- The mapping file as loaded: one row per (key, domain).  A key is an
-- experiment name or a study name (the Psych-201 file keys studies).
CREATE TABLE domain_map (
    key      VARCHAR NOT NULL,
    domain   VARCHAR,                    -- NULL: the key belongs to no listed domain
    dataset  VARCHAR,
    source   VARCHAR NOT NULL
);

CREATE TABLE experiments (
    experiment  VARCHAR PRIMARY KEY,
    study       VARCHAR NOT NULL,
    domain      VARCHAR,                 -- the first listed domain, NULL if none/unknown
    domains     VARCHAR[],               -- every listed domain (may be empty)
    domain_key  VARCHAR                  -- which domain_map key matched, NULL if none
);

CREATE TABLE participants (
    participant_key  BIGINT PRIMARY KEY,
    study            VARCHAR NOT NULL,
    experiment       VARCHAR NOT NULL,
    participant      VARCHAR NOT NULL,
    age              DOUBLE,
    gender           VARCHAR,
    nationality      VARCHAR,
    education        VARCHAR,
    diagnosis        VARCHAR,
    metadata         JSON,               -- every other metadata key, as given
    n_responses      INTEGER NOT NULL,
    content_sha256   VARCHAR NOT NULL,   -- of the canonical JSON record
    ingest_id        INTEGER NOT NULL,
    line             BIGINT NOT NULL     -- 1-based line in the source file
);

-- Typed key/value form of participants.metadata (questionnaire scores, ...).
CREATE TABLE participant_metadata (
    participant_key  BIGINT NOT NULL,
    key              VARCHAR NOT NULL,
    value_num        DOUBLE,             -- set when the value is a number (or bool)
    value_text       VARCHAR,            -- set when the value is a string
    value_json       JSON                -- the value as given
);

CREATE TABLE transcripts (
    participant_key  BIGINT PRIMARY KEY,
    text             VARCHAR NOT NULL,
    sha256           VARCHAR NOT NULL,   -- of the UTF-8 text
    n_chars          INTEGER NOT NULL
);

CREATE TABLE responses (
    response_id      BIGINT NOT NULL,
    participant_key  BIGINT NOT NULL,
    study            VARCHAR NOT NULL,
    experiment       VARCHAR NOT NULL,
    participant      VARCHAR NOT NULL,
    response_index   INTEGER NOT NULL,   -- 0-based within the participant
    text             VARCHAR NOT NULL,   -- between the markers, markers excluded
    char_start       INTEGER NOT NULL,
    char_end         INTEGER NOT NULL,
    rt               DOUBLE              -- from RTs, when given
);

CREATE SEQUENCE model_id_seq START 1;
CREATE TABLE models (
    model_id         INTEGER PRIMARY KEY,
    name             VARCHAR NOT NULL UNIQUE,
    source           VARCHAR,            -- hub id, local folder or .gguf path; NULL for external scorers
    revision         VARCHAR,
    gguf_file        VARCHAR,
    tokenizer_source VARCHAR,
    family           VARCHAR,            -- qwen | llama | olmo | smollm | ... | other
    generation       VARCHAR,            -- e.g. '3', '2.5', '3.1'
    generation_order DOUBLE,             -- order within the family
    n_params         BIGINT,             -- counted from the weights
    post_training    VARCHAR NOT NULL,   -- base|instruct|reasoning|vision|code|math|other
    base_model       VARCHAR,            -- models.name of the base it descends from
    trust_remote_code BOOLEAN NOT NULL DEFAULT false,
    inferred         JSON,               -- what was inferred, and from what
    created_at       TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE SEQUENCE run_id_seq START 1;
CREATE TABLE score_runs (
    run_id           INTEGER PRIMARY KEY,
    model            VARCHAR NOT NULL,   -- models.name
    condition        VARCHAR NOT NULL,   -- plain | chat | persona | imported
    scorer           VARCHAR NOT NULL,   -- 'psystats' or the name given to `scores import`
    selection        JSON,               -- study/experiment filters
    settings         JSON,               -- rendering/tokenisation/batching settings, exactly
    dtype            VARCHAR,
    device           VARCHAR,
    tokenizer_sha256 VARCHAR,
    weights_sha256   VARCHAR,
    psystats_version VARCHAR NOT NULL,
    started_at       TIMESTAMP NOT NULL,
    finished_at      TIMESTAMP,
    status           VARCHAR NOT NULL,   -- running | complete | failed
    n_participants   BIGINT,
    n_responses      BIGINT,
    n_skipped        BIGINT,
    counts           JSON,               -- skipped/truncated/oom-backoffs ... by reason
    error            VARCHAR
);

CREATE TABLE scores (
    run_id              INTEGER NOT NULL,
    response_id         BIGINT NOT NULL,
    nll                 DOUBLE,          -- summed NLL (nats) of the response tokens
    n_tokens            INTEGER,
    first_token_nll     DOUBLE,
    top1_all            BOOLEAN,         -- argmax matched at every response position
    top1_first          BOOLEAN,         -- argmax matched at the first response position
    first_token_entropy DOUBLE,          -- nats
    PRIMARY KEY (run_id, response_id)
);

-- For responses drawn from a finite option set: log-probability of each
-- option, renormalised over the set.
CREATE TABLE option_scores (
    run_id       INTEGER NOT NULL,
    response_id  BIGINT NOT NULL,
    option       VARCHAR NOT NULL,
    logprob      DOUBLE NOT NULL
);

-- Declared or detected option sets per experiment.
CREATE TABLE option_sets (
    experiment  VARCHAR NOT NULL,
    option      VARCHAR NOT NULL,
    source      VARCHAR NOT NULL          -- 'detected' | 'declared'
);

CREATE TABLE token_scores (
    run_id       INTEGER NOT NULL,
    response_id  BIGINT NOT NULL,
    token_index  INTEGER NOT NULL,
    token_id     INTEGER NOT NULL,
    token        VARCHAR,
    logprob      DOUBLE NOT NULL
);

CREATE SEQUENCE fit_id_seq START 1;
CREATE TABLE fits (
    fit_id           INTEGER PRIMARY KEY,
    kind             VARCHAR NOT NULL,   -- effects | generations | persona | accuracy | ...
    name             VARCHAR,
    condition        VARCHAR,
    scale            VARCHAR,            -- nats | standardised
    spec             JSON,               -- model specification (terms, coding)
    priors           JSON,
    selection        JSON,               -- which runs / models / experiments were used
    sampler          JSON,               -- sampler, chains, draws, tune, seed
    diagnostics      JSON,               -- max R-hat, min ESS, divergences, E-BFMI, LOO, ...
    summary          JSON,               -- headline quantities, e.g. P(gap grows), ROPE probabilities
    passed           BOOLEAN,            -- diagnostic gates met
    netcdf_path      VARCHAR,            -- full InferenceData
    seconds          DOUBLE,
    psystats_version VARCHAR NOT NULL,
    created_at       TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE fit_params (
    fit_id      INTEGER NOT NULL,
    parameter   VARCHAR NOT NULL,        -- variable name, e.g. 'type_effect'
    label       VARCHAR,                 -- readable index, e.g. 'instruct' or 'Reasoning'
    coords      JSON,                    -- {dim: label} for every dimension
    mean        DOUBLE,
    sd          DOUBLE,
    q03         DOUBLE,
    q05         DOUBLE,                  -- q05/q95: the 90% interval the report marks
    q50         DOUBLE,
    q95         DOUBLE,
    q97         DOUBLE,
    hdi_low     DOUBLE,                  -- 94% HDI
    hdi_high    DOUBLE,
    r_hat       DOUBLE,
    ess_bulk    DOUBLE,
    ess_tail    DOUBLE
);
"""

# A convenience view users ask for first: each response with its experiment's domain.
MIGRATION_2 = """
CREATE VIEW response_domains AS
SELECT r.response_id, r.study, r.experiment, e.domain, e.domains
FROM responses r JOIN experiments e USING (experiment);
"""

# Issue 11: a fit built on scores that `ingest --replace-changed` deleted is
# stale (NULL: current).  Runs that lost scores get score_runs.status
# 'incomplete' (no schema change: status is free text).
MIGRATION_3 = """
ALTER TABLE fits ADD COLUMN stale_reason VARCHAR;
"""

# Issue 14: adapters on a base (PEFT; the adapter's location, revision and
# weights hash) and the quantisation of a checkpoint (NULL: full precision).
MIGRATION_MODEL_CLASSES = """
ALTER TABLE models ADD COLUMN adapter VARCHAR;
ALTER TABLE models ADD COLUMN adapter_revision VARCHAR;
ALTER TABLE models ADD COLUMN adapter_sha256 VARCHAR;
ALTER TABLE models ADD COLUMN quantization VARCHAR;
"""

# Issue 13: a model's public release date (NULL: unknown), for
# `fit effects --generation-scale date`; the registry fills it for models it knows.
MIGRATION_RELEASE_DATE = """
ALTER TABLE models ADD COLUMN release_date DATE;
"""

# Issue 13: a model that only checks the pipeline (a random-initialised
# network, a stand-in pair) says why; the report puts a caveat on every page
# that shows it (NULL: a real model).
MIGRATION_PIPELINE_CHECK = """
ALTER TABLE models ADD COLUMN pipeline_check VARCHAR;
"""

# Issue 12: warehouse-wide settings (the scores layout, 'duckdb' or 'parquet',
# and where the Parquet files are: warehouse/parquet_layout.py), the Parquet
# files each run's rows are in, and rows deleted from runs whose files stay.
MIGRATION_SCORES_LAYOUT = """
CREATE TABLE warehouse_settings (
    key    VARCHAR PRIMARY KEY,
    value  VARCHAR NOT NULL
);
INSERT INTO warehouse_settings VALUES ('scores_layout', 'duckdb');
CREATE TABLE score_files (
    table_name  VARCHAR NOT NULL,       -- scores | option_scores | token_scores
    run_id      INTEGER NOT NULL,
    file        VARCHAR NOT NULL,       -- relative to <scores dir>/<table>/
    n_rows      BIGINT NOT NULL,
    source      VARCHAR,                -- 'write', or 'link:<shard file>' / 'copy:<shard file>'
    added_at    TIMESTAMP NOT NULL
);
CREATE TABLE score_rows_deleted (
    run_id       INTEGER NOT NULL,
    response_id  BIGINT NOT NULL
);
"""

# Issue 15: finer scores.  Per token (score --entropy / --rank): the entropy
# (nats) of the next-token distribution and the rank of the human's token
# (1: the model's top token); NULL unless asked.  Per word (score
# --word-level): scoring/words.py defines words and the beginning-of-word
# correction; `nll` is corrected when the run's settings say so,
# `token_nll` is the plain sum of the word's token NLLs.
MIGRATION_FINER_SCORES = """
ALTER TABLE token_scores ADD COLUMN entropy DOUBLE;
ALTER TABLE token_scores ADD COLUMN rank INTEGER;
CREATE TABLE word_scores (
    run_id       INTEGER NOT NULL,
    response_id  BIGINT NOT NULL,
    word_index   INTEGER NOT NULL,      -- 0-based, within the response
    word         VARCHAR NOT NULL,
    char_start   INTEGER NOT NULL,      -- in the response text (markers excluded)
    char_end     INTEGER NOT NULL,
    token_start  INTEGER NOT NULL,      -- token_scores.token_index of its first token
    n_tokens     INTEGER NOT NULL,
    nll          DOUBLE,                -- nats; NULL when no token starts in the word
    token_nll    DOUBLE
);
"""

# Issue 22: a run that scored a seeded sample of its selection says so
# (scoring/sample.py; e.g. 'participants=5 per experiment, seed=0'); NULL: a full run.
MIGRATION_SAMPLE_SPEC = """
ALTER TABLE score_runs ADD COLUMN sample_spec VARCHAR;
"""

# Issue 19: the unit of every reported parameter (e.g. 'nats', 'nats per generation
# step', 'nats per year', 'SD', 'logit'; psystats/stats/units.py); NULL where the
# analysis did not record one (fits stored before this column, formula fits).
MIGRATION_PARAM_UNITS = """
ALTER TABLE fit_params ADD COLUMN unit VARCHAR;
"""

# Issue 21: integrity of the Parquet layout.  Each partition file's size and
# SHA-256, recorded when it is written (NULL for files written before this
# migration until `psystats check --repair` verifies and records them).
MIGRATION_FILE_INTEGRITY = """
ALTER TABLE score_files ADD COLUMN size_bytes BIGINT;
ALTER TABLE score_files ADD COLUMN sha256 VARCHAR;
"""

# Issue 21: what an imported (external) score run needs to be complete again
# after it lost rows: the participants `ingest --replace-changed` replaced
# (kind 'replaced': every response of the participant's current version needs
# a score), or rows `psystats check --repair` had to set aside (kind 'lost':
# the run needs expected_rows rows again).  `psystats scores import FILE
# --run N` fills them in place; psystats-scored runs resume with `psystats score`.
MIGRATION_RUN_GAPS = """
CREATE TABLE score_run_gaps (
    run_id         INTEGER NOT NULL,
    kind           VARCHAR NOT NULL,     -- replaced | lost
    study          VARCHAR,              -- kind 'replaced': the participant's natural key
    experiment     VARCHAR,
    participant    VARCHAR,
    expected_rows  BIGINT,               -- kind 'lost': rows the run held before
    reason         VARCHAR NOT NULL,
    created_at     TIMESTAMP NOT NULL
);
"""

MIGRATIONS: list[str] = [
    MIGRATION_1,
    MIGRATION_2,
    MIGRATION_3,
    MIGRATION_MODEL_CLASSES,
    MIGRATION_RELEASE_DATE,
    MIGRATION_SCORES_LAYOUT,
    MIGRATION_FINER_SCORES,
    MIGRATION_PIPELINE_CHECK,  # appended: a shipped migration's position never changes
    MIGRATION_SAMPLE_SPEC,
    MIGRATION_PARAM_UNITS,
    MIGRATION_FILE_INTEGRITY,
    MIGRATION_RUN_GAPS,
]
SCHEMA_VERSION = len(MIGRATIONS)
