-- Topics (issue 28): lists a person subscribes to, each with its own consent, and an
-- optional welcome email sent once to each person who joins it.
--
-- A topic's welcome message is stored as a campaign of its own (`campaigns.welcome`,
-- named by `topics.welcome_campaign_id`): it gets the pixel, the footer, the headers and
-- the statistics of every campaign, and `deliveries`' primary key sends it to each
-- person once, however often they leave and join again.
CREATE TABLE topics (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug                 text        NOT NULL UNIQUE
                                     CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name                 text        NOT NULL,
    description          text        NOT NULL DEFAULT '',
    is_default           boolean     NOT NULL DEFAULT false,  -- a sign-up naming none joins it
    welcome_campaign_id  bigint      REFERENCES campaigns (id),
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- Who is in which topic, since when. Personal data (it says what a person reads): goes
-- with the subscriber (the erasure's DELETE cascades here) and with the topic.
CREATE TABLE subscriber_topics (
    topic_id       bigint      NOT NULL REFERENCES topics (id) ON DELETE CASCADE,
    subscriber_id  bigint      NOT NULL REFERENCES subscribers (id) ON DELETE CASCADE,
    joined_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic_id, subscriber_id)
);
CREATE INDEX subscriber_topics_subscriber ON subscriber_topics (subscriber_id);

-- The topics a pending sign-up asked for: a proposal, like `tracking_requested`, that the
-- confirmation turns into memberships. NULL: none asked for (the default topics apply).
ALTER TABLE subscribers ADD COLUMN topics_requested bigint[];

-- A campaign for the active subscribers of any of these topics; NULL: for everyone.
-- `welcome`: a topic's welcome message, never sent to a list, not in the campaign list.
ALTER TABLE campaigns ADD COLUMN topic_ids bigint[];
ALTER TABLE campaigns ADD COLUMN welcome boolean NOT NULL DEFAULT false;

-- Joining and leaving a topic are consent events (`method` holds the topic's slug, which
-- stays readable after the topic is deleted).
ALTER TABLE consent_events DROP CONSTRAINT consent_events_kind_check;
ALTER TABLE consent_events ADD CONSTRAINT consent_events_kind_check CHECK (kind IN (
    'signup', 'confirm', 'tracking_granted', 'tracking_withdrawn', 'address_changed',
    'topic_joined', 'topic_left'));

-- The welcome email: a job bound to its campaign (the welcome campaign; the circuit
-- breaker parks, resumes and cancels it with the campaign's jobs), claimed with
-- the emails a person waits for (priority 0, as the generated column gives every kind
-- but `campaign`).
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (
    kind IN ('confirm', 'campaign', 'manage_link', 'address_confirm', 'welcome'));
ALTER TABLE outbox DROP CONSTRAINT outbox_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_check
    CHECK ((kind IN ('campaign', 'welcome')) = (campaign_id IS NOT NULL));
