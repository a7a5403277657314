#include <cctype>
#include <charconv>
#include <cstdlib>

#include "mooncake_connector/mooncake_store.h"

namespace mooncake_connector {
namespace {

// Each setting: its option name, its environment variable, and how to apply
// a text value to the config (given the option name, for messages).
struct Setting {
  const char* option;
  const char* env;  // may be null
  Status (*apply)(MooncakeConfig&, const std::string& value, const char* option);
};

Result<int64_t> ParseInt(const std::string& text, const char* what, int64_t lo, int64_t hi) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < lo || v > hi) {
    return InvalidArgument(std::string(what) + " must be an integer from " + std::to_string(lo) +
                           " to " + std::to_string(hi) + ", got '" + text + "'");
  }
  return v;
}

Result<std::chrono::milliseconds> ParseDuration(const std::string& text) {
  std::string number = text, unit;
  while (!number.empty() && std::isalpha(static_cast<unsigned char>(number.back()))) {
    unit.insert(unit.begin(), number.back());
    number.pop_back();
  }
  double v = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), v);
  if (number.empty() || ec != std::errc() || end != number.data() + number.size() || v < 0) {
    return InvalidArgument("invalid duration '" + text + "' (e.g. 500ms, 5s, 1m)");
  }
  double ms;
  if (unit.empty() || unit == "ms") ms = v;
  else if (unit == "s") ms = v * 1000;
  else if (unit == "m") ms = v * 60000;
  else return InvalidArgument("invalid duration unit in '" + text + "' (ms, s or m)");
  if (!(ms <= 24.0 * 3600 * 1000)) return InvalidArgument("duration '" + text + "' is longer than a day");
  return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

// The setters of the kinds of settings: text, a byte size, an integer in
// [Lo, Hi] (a flag: 0 or 1), a duration.
template <auto Field>
Status TextSetting(MooncakeConfig& c, const std::string& v, const char*) {
  c.*Field = v;
  return Status::Ok();
}

template <auto Field>
Status SizeSetting(MooncakeConfig& c, const std::string& v, const char*) {
  MC_ASSIGN_OR_RETURN(c.*Field, ParseByteSize(v));
  return Status::Ok();
}

template <auto Field, int64_t Lo, int64_t Hi>
Status IntSetting(MooncakeConfig& c, const std::string& v, const char* option) {
  MC_ASSIGN_OR_RETURN(int64_t n, ParseInt(v, option, Lo, Hi));
  c.*Field = static_cast<std::remove_reference_t<decltype(c.*Field)>>(n);
  return Status::Ok();
}

template <auto Field>
Status DurationSetting(MooncakeConfig& c, const std::string& v, const char*) {
  MC_ASSIGN_OR_RETURN(c.*Field, ParseDuration(v));
  return Status::Ok();
}

using C = MooncakeConfig;

const Setting kSettings[] = {
    {"master", "MOONCAKE_MASTER", TextSetting<&C::master_address>},
    {"client", "MOONCAKE_CLIENT", TextSetting<&C::client_address>},
    {"protocol", "MOONCAKE_PROTOCOL", TextSetting<&C::protocol>},
    {"device", "MOONCAKE_DEVICE", TextSetting<&C::device_name>},
    {"metadata_server", "MOONCAKE_TE_META_DATA_SERVER", TextSetting<&C::metadata_server>},
    {"local_hostname", "MOONCAKE_LOCAL_HOSTNAME", TextSetting<&C::local_hostname>},
    {"library", "MOONCAKE_STORE_LIBRARY", TextSetting<&C::library>},
    {"global_segment_size", "MOONCAKE_GLOBAL_SEGMENT_SIZE", SizeSetting<&C::global_segment_size>},
    {"local_buffer_size", "MOONCAKE_LOCAL_BUFFER_SIZE", SizeSetting<&C::local_buffer_size>},
    {"chunk_size", "MOONCAKE_CHUNK_SIZE",
     [](MooncakeConfig& c, const std::string& v, const char*) {
       MC_ASSIGN_OR_RETURN(c.chunk_size, ParseByteSize(v));
       if (c.chunk_size < 4096) return InvalidArgument("chunk_size must be at least 4kb, got " + v);
       return Status::Ok();
     }},
    {"replica_num", "MOONCAKE_REPLICA_NUM", IntSetting<&C::replica_num, 1, 64>},
    {"transfer_slots", "MOONCAKE_TRANSFER_SLOTS", IntSetting<&C::transfer_slots, 1, 256>},
    {"read_threads", "MOONCAKE_READ_THREADS", IntSetting<&C::read_threads, 0, 16>},
    {"direct_transfers", "MOONCAKE_DIRECT_TRANSFERS", IntSetting<&C::direct_transfers, 0, 1>},
    {"local_reads", "MOONCAKE_LOCAL_READS", IntSetting<&C::local_reads, 0, 1>},
    {"metrics_port", "MOONCAKE_MASTER_METRICS_PORT", IntSetting<&C::metrics_port, 1, 65535>},
    {"pin", "MOONCAKE_PIN",
     [](MooncakeConfig& c, const std::string& v, const char*) {
       if (v == "none" || v.empty()) c.pin = PinMode::kNone;
       else if (v == "soft") c.pin = PinMode::kSoft;
       else if (v == "hard") c.pin = PinMode::kHard;
       else return InvalidArgument("pin must be none, soft or hard, got '" + v + "'");
       return Status::Ok();
     }},
    {"connect_timeout", "MOONCAKE_CONNECT_TIMEOUT", DurationSetting<&C::connect_timeout>},
    {"op_timeout", "MOONCAKE_OP_TIMEOUT",
     [](MooncakeConfig& c, const std::string& v, const char*) {
       MC_ASSIGN_OR_RETURN(c.op_timeout, ParseDuration(v));
       if (c.op_timeout.count() <= 0) return InvalidArgument("op_timeout must be positive, got " + v);
       return Status::Ok();
     }},
};

std::optional<std::string> ProcessEnv(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) return std::nullopt;
  return std::string(v);
}

}  // namespace

Result<MooncakeConfig> MooncakeConfigFrom(const Url& url,
                                          const std::map<std::string, std::string>& options,
                                          const EnvLookup& getenv) {
  const EnvLookup& env = getenv ? getenv : EnvLookup(&ProcessEnv);
  MooncakeConfig config;
  for (const Setting& s : kSettings) {
    if (s.env == nullptr) continue;
    std::optional<std::string> v = env(s.env);
    if (v && !v->empty()) MC_RETURN_IF_ERROR(s.apply(config, *v, s.option).WithContext(s.env));
  }
  if (!url.host.empty()) {
    if (!url.port) {
      std::string model = url.host + (url.path.empty() ? "" : "/" + url.path);
      return InvalidArgument("mooncake:// URL '" + url.ToString() + "' names a host without a port: for the model '" +
                             model + "' with the master from MOONCAKE_MASTER write mooncake:///" + model +
                             "; to name the master write mooncake://" + url.host + ":PORT/MODEL");
    }
    config.master_address = url.Authority();
  }
  for (const auto& [name, value] : options) {
    const Setting* found = nullptr;
    for (const Setting& s : kSettings) {
      if (name == s.option) found = &s;
    }
    if (found == nullptr) {
      std::string known;
      for (const Setting& s : kSettings) known += (known.empty() ? "" : ", ") + std::string(s.option);
      return InvalidArgument("unknown option '" + name + "' for mooncake:// (known: " + known + ")");
    }
    MC_RETURN_IF_ERROR(found->apply(config, value, found->option).WithContext("option " + name));
  }
  if (config.master_address.empty() && config.client_address.empty()) {
    return InvalidArgument(
        "no Mooncake master configured: set MOONCAKE_MASTER=host:port (or MOONCAKE_CLIENT for a "
        "running mooncake_client), or put the master in the URL (mooncake://host:port/model). "
        "To start a local instance: mooncake-connector standalone");
  }
  return config;
}

}  // namespace mooncake_connector
