-- When a subscriber withdrew (or objected to) personal open tracking through
-- /tracking/{token}. In TRACKING_MODE=notice this is the objection that stops personal
-- open events; in consent mode `tracking_consent` alone decides (a later, explicit
-- grant sets it true again).
ALTER TABLE subscribers ADD COLUMN tracking_withdrawn_at timestamptz;
