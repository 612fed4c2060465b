-- An address change that is shown but never mailed (service/manage_address.py).
--
-- The person's page answered and showed the same thing whether the new address was
-- free, someone's subscription, or over its daily email allowance, except that only a
-- free one appeared as "waiting for confirmation": a silent probe of who is subscribed.
-- Now every request from the page is stored and shown alike; a request for an address
-- that is taken or over its allowance is `unmailed`: its confirmation email is never
-- composed (its outbox job finds nothing to send), so nobody can confirm it, and the
-- retention pass deletes it after CONFIRM_MAX_AGE as any unconfirmed change.
ALTER TABLE address_changes ADD COLUMN unmailed boolean NOT NULL DEFAULT false;
