-- Row-level security. Re-applying this file is harmless.
--
-- An end user (the app, with the anon key and the user's own JWT, i.e. role `authenticated`) reads only rows whose
-- user_id is the JWT's `sub`, and may write only their own onboarding answers. The worker uses the service role (or
-- the tables' owner through DATABASE_URL) and may do everything. `anon` alone sees nothing.
--
-- On Supabase the roles and auth.uid() already exist. On plain PostgreSQL they are created here, with auth.uid()
-- reading the claims the way PostgREST sets them (`request.jwt.claims`), so the same policies can be tested locally.

do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select 1 from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit;
    end if;
    if not exists (select 1 from pg_namespace where nspname = 'auth') then
        create schema auth;
        grant usage on schema auth to anon, authenticated, service_role;
    end if;
    if not exists (
        select 1 from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'auth' and p.proname = 'uid'
    ) then
        create function auth.uid() returns uuid language sql stable as $fn$
            select nullif(
                coalesce(
                    current_setting('request.jwt.claim.sub', true),
                    current_setting('request.jwt.claims', true)::jsonb ->> 'sub'
                ),
                ''
            )::uuid
        $fn$;
        grant execute on function auth.uid() to anon, authenticated, service_role;
    end if;
end
$$;

grant usage on schema public to anon, authenticated, service_role;

do $$
declare
    t text;
begin
    foreach t in array array['profiles', 'onboarding_answers', 'memories', 'memory_history', 'conversations', 'messages']
    loop
        execute format('alter table public.%I enable row level security', t);

        execute format('revoke all on public.%I from anon, authenticated', t);
        execute format('grant select on public.%I to authenticated', t);
        execute format('grant all on public.%I to service_role', t);

        execute format('drop policy if exists %I on public.%I', t || '_owner_read', t);
        execute format(
            'create policy %I on public.%I for select to authenticated using (user_id = auth.uid())',
            t || '_owner_read', t);

        execute format('drop policy if exists %I on public.%I', t || '_service_all', t);
        execute format(
            'create policy %I on public.%I for all to service_role using (true) with check (true)',
            t || '_service_all', t);
    end loop;
end
$$;

-- The app submits onboarding answers as the signed-in user.
grant insert, update on public.onboarding_answers to authenticated;
drop policy if exists onboarding_answers_owner_write on public.onboarding_answers;
create policy onboarding_answers_owner_write on public.onboarding_answers
    for insert to authenticated with check (user_id = auth.uid());
drop policy if exists onboarding_answers_owner_update on public.onboarding_answers;
create policy onboarding_answers_owner_update on public.onboarding_answers
    for update to authenticated using (user_id = auth.uid()) with check (user_id = auth.uid());

-- The worker's functions are for the service role only.
revoke all on function public.companion_record_memory_access(jsonb) from public, anon, authenticated;
revoke all on function public.companion_delete_user_data(uuid) from public, anon, authenticated;
grant execute on function public.companion_record_memory_access(jsonb) to service_role;
grant execute on function public.companion_delete_user_data(uuid) to service_role;
grant usage on all sequences in schema public to service_role;
