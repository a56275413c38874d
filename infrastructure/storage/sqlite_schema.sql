-- Companion schema for the embedded SQLite backend: the same logical tables as supabase/migrations.
-- Times are UTC ISO-8601 text of fixed width (so they sort), ids are UUID text, JSON is text, embeddings are
-- float32 BLOBs. Created on first use; every statement is safe to run again.

create table if not exists profiles (
    user_id        text primary key,
    name           text,
    preferred_name text,
    timezone       text,
    language       text,
    summary        text,
    created_at     text not null,
    updated_at     text not null,
    version        integer not null default 0
);

create table if not exists onboarding_answers (
    user_id      text primary key,
    answers      text not null default '{}',
    submitted_at text not null,
    processed_at text
);

create table if not exists memories (
    id               text primary key,
    user_id          text not null,
    category         text not null,
    key              text not null,
    value            text not null,
    importance       real not null default 0.5 check (importance >= 0 and importance <= 1),
    source           text not null default 'tool',
    embedding        blob,
    created_at       text not null,
    updated_at       text not null,
    last_accessed_at text,
    access_count     integer not null default 0,
    version          integer not null default 0,
    unique (user_id, category, key)
);
create index if not exists memories_user_updated on memories (user_id, updated_at desc);

create table if not exists memory_history (
    id         integer primary key autoincrement,
    memory_id  text not null references memories (id) on delete cascade,
    user_id    text not null,
    category   text not null,
    key        text not null,
    old_value  text not null,
    new_value  text not null,
    changed_at text not null
);
create index if not exists memory_history_lookup on memory_history (user_id, category, key, changed_at);

create table if not exists conversations (
    id           text primary key,
    user_id      text not null,
    started_at   text not null,
    ended_at     text,
    summary      text,
    open_threads text not null default '[]'
);
create index if not exists conversations_user_started on conversations (user_id, started_at desc);

create table if not exists messages (
    id              text primary key,
    conversation_id text not null,
    user_id         text not null,
    role            text not null check (role in ('user', 'assistant', 'system')),
    content         text not null,
    created_at      text not null
);
create index if not exists messages_user_created on messages (user_id, created_at desc);
create index if not exists messages_conversation_created on messages (conversation_id, created_at);

create trigger if not exists memories_record_change
after update of value on memories
when new.value is not old.value
begin
    insert into memory_history (memory_id, user_id, category, key, old_value, new_value, changed_at)
    values (old.id, old.user_id, old.category, old.key, old.value, new.value, new.updated_at);
end;

-- A version per user, bumped by the database on every change to the user's profile or memories, and stamped on the
-- changed row (see supabase/migrations/0003, 0005 and 0006: only a real change moves it). Never deleted: a version
-- never goes back to an old number. A deleted memory's tombstone (a hash of user, category and key) is written by
-- the backend in the same transaction as the delete, and pruned after a while (0007). Columns added since a file
-- was created are added by SqliteStorage.open before this script runs.
create table if not exists user_versions (
    user_id        text primary key,
    version        integer not null default 0,
    erased_version integer not null default 0,
    pruned_version integer not null default 0  -- 0007: the newest tombstone pruned
);

create table if not exists memory_tombstones (
    user_id    text not null,
    key_hash   text not null,
    version    integer not null,
    created_at text not null default '',  -- 0007: pruned after TOMBSTONE_RETENTION_HOURS
    primary key (user_id, key_hash)
);
create index if not exists memory_tombstones_user_version on memory_tombstones (user_id, version);
create index if not exists memory_tombstones_created_at on memory_tombstones (created_at);
create index if not exists memories_user_version on memories (user_id, version);

-- Recursive triggers are off (SQLite's default), so the stamping update below does not fire these again.
create trigger if not exists profiles_insert_stamp_version after insert on profiles
begin
    insert into user_versions (user_id, version) values (new.user_id, 1)
        on conflict (user_id) do update set version = version + 1;
    update profiles set version = (select version from user_versions where user_id = new.user_id)
     where user_id = new.user_id;
end;

create trigger if not exists profiles_update_stamp_version
after update of name, preferred_name, timezone, language, summary, updated_at on profiles
begin
    insert into user_versions (user_id, version) values (new.user_id, 1)
        on conflict (user_id) do update set version = version + 1;
    update profiles set version = (select version from user_versions where user_id = new.user_id)
     where user_id = new.user_id;
end;

create trigger if not exists profiles_delete_bump_version after delete on profiles
begin
    insert into user_versions (user_id, version) values (old.user_id, 1)
        on conflict (user_id) do update set version = version + 1;
end;

create trigger if not exists memories_insert_stamp_version after insert on memories
begin
    insert into user_versions (user_id, version) values (new.user_id, 1)
        on conflict (user_id) do update set version = version + 1;
    update memories set version = (select version from user_versions where user_id = new.user_id)
     where id = new.id;
end;

create trigger if not exists memories_update_stamp_version after update of value, importance on memories
when new.value is not old.value or new.importance is not old.importance
begin
    insert into user_versions (user_id, version) values (new.user_id, 1)
        on conflict (user_id) do update set version = version + 1;
    update memories set version = (select version from user_versions where user_id = new.user_id)
     where id = new.id;
end;

create trigger if not exists memories_delete_bump_version after delete on memories
begin
    insert into user_versions (user_id, version) values (old.user_id, 1)
        on conflict (user_id) do update set version = version + 1;
end;

-- The triggers before 0005 bumped without stamping; the stamping ones above replace them.
drop trigger if exists profiles_insert_bump_version;
drop trigger if exists profiles_update_bump_version;
drop trigger if exists memories_insert_bump_version;
drop trigger if exists memories_update_bump_version;

-- When a user last had something forgotten (see supabase/migrations/0004_forgettings.sql).
create table if not exists forgettings (
    user_id      text primary key,
    forgotten_at text not null
);
