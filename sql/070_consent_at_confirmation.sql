-- Consent to personal open tracking is granted by the person who confirms, never by a
-- sign-up form: whoever submits a form can type anyone's address. A sign-up now records
-- only the wish (`tracking_requested`), which the confirmation page shows, unticked
-- or ticked, for the person to confirm or change; `tracking_consent` becomes true only
-- through that page's button (or a later explicit grant), with its own evidence row.
ALTER TABLE subscribers ADD COLUMN tracking_requested boolean NOT NULL DEFAULT false;

-- Pending sign-ups whose form ticked the box under the old rule: the tick becomes the
-- wish, and the person decides when confirming. (Active subscribers confirmed with the
-- consent recorded at sign-up; their evidence rows stay as they are.)
UPDATE subscribers
SET tracking_requested = true, tracking_consent = false
WHERE status = 'pending' AND tracking_consent;
