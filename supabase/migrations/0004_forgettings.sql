-- When a user last had something forgotten (a forget, or everything erased). A write of theirs older than that,
-- replayed from a local outbox that a dead job process left (infrastructure/outbox.py), may hold what was forgotten,
-- and is dropped instead of stored. One row per user, no personal data; it outlives the user's erasure.
-- Re-applying this file is harmless.

create table if not exists public.forgettings (
    user_id      uuid primary key,
    forgotten_at timestamptz not null
);

alter table public.forgettings enable row level security;
grant all on public.forgettings to service_role;
