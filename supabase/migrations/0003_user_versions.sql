-- A version per user, bumped by the database itself whenever the user's profile or memories change or are
-- deleted. Caches key what they hold by it, so an entry from before a change (a Redis restored from an old
-- snapshot, a read-only replica that missed an invalidation) is never served: the database is the truth.
-- The row holds no personal data and outlives the user's erasure, so a version never goes back to an old number.
-- Re-applying this file is harmless.

create table if not exists public.user_versions (
    user_id uuid primary key,
    version bigint not null default 0
);

alter table public.user_versions enable row level security;
drop policy if exists user_versions_owner_read on public.user_versions;
create policy user_versions_owner_read on public.user_versions
    for select to authenticated using (user_id = auth.uid());
grant select on public.user_versions to authenticated;
grant all on public.user_versions to service_role;

-- security definer: an end user's own write (row-level security, no write grant here) still bumps its version.
create or replace function public.companion_bump_user_version() returns trigger
language plpgsql security definer set search_path = public as $$
declare
    uid uuid := case when tg_op = 'DELETE' then old.user_id else new.user_id end;
begin
    if tg_op = 'UPDATE' and tg_table_name = 'memories' then
        if new.value is not distinct from old.value then
            return null;  -- an access count or importance: nothing a cache holds
        end if;
    end if;
    insert into public.user_versions as v (user_id, version) values (uid, 1)
        on conflict (user_id) do update set version = v.version + 1;
    return null;
end
$$;

drop trigger if exists profiles_bump_user_version on public.profiles;
create trigger profiles_bump_user_version
    after insert or update or delete on public.profiles
    for each row execute function public.companion_bump_user_version();

drop trigger if exists memories_bump_user_version on public.memories;
create trigger memories_bump_user_version
    after insert or update or delete on public.memories
    for each row execute function public.companion_bump_user_version();
