// minitron::Tokenizer: encode/decode over a parsed tokenizer.json (see tokenizer_load.cpp).
//
// Encode follows HF `tokenizers`: added tokens are cut out of the raw text first and never
// split; each remaining segment is normalized, pre-tokenized, and each pre-token is run
// through BPE (lowest merge rank first, leftmost on ties). Pre-token results are cached.
//
// Deliberate differences from HF, documented because a round trip depends on them:
// - Decode returns the raw bytes. HF's byte-level and ByteFallback decoders replace invalid
//   UTF-8 with U+FFFD; ours gives the original bytes back, so decode(encode(x)) == x for any
//   bytes x with byte-level BPE, and for SentencePiece-style BPE with byte_fallback when x
//   is valid UTF-8 without leading spaces the decoder strips (HF cannot take invalid input;
//   ours encodes an invalid byte as its <0xNN> token).
// - Added tokens marked "normalized": true are matched on the raw text, not on the
//   normalized text (the Llama/Mistral files mark them all normalized: false).
#include "data/tokenizer.h"

#include <algorithm>
#include <climits>
#include <deque>
#include <filesystem>
#include <queue>

#include <nlohmann/json.hpp>

#include "data/tokenizer_bytes.h"
#include "data/tokenizer_impl.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;

bool PreTokenCache::lookup(std::string_view key, std::size_t hash, std::vector<std::int32_t>& out) {
  Shard& shard = shards_[hash % kShards];
  std::lock_guard<std::mutex> lock(shard.mutex);
  auto it = shard.map.find(key);
  if (it == shard.map.end()) return false;
  out.insert(out.end(), it->second.begin(), it->second.end());
  return true;
}

void PreTokenCache::insert(std::string_view key, std::size_t hash, const std::int32_t* ids, std::size_t n) {
  Shard& shard = shards_[hash % kShards];
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.map.size() >= kShardCapacity) shard.map.clear();
  shard.map.try_emplace(std::string(key), ids, ids + n);
}

namespace {

struct Piece {
  std::string_view text;
  bool at_text_start;  // begins at offset 0 of the original text (Metaspace "first")
};

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

bool is_word_byte(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return;
  std::string out;
  std::size_t pos = 0;
  for (std::size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out.append(to);
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

std::string normalize(const std::vector<NormalizerStep>& steps, std::string_view text) {
  std::string s(text);
  std::vector<std::pair<std::size_t, std::size_t>> matches;
  for (const NormalizerStep& step : steps) {
    switch (step.kind) {
      case NormalizerStep::Kind::kPrepend:
        if (!s.empty()) s.insert(0, step.text);
        break;
      case NormalizerStep::Kind::kReplace:
        if (!step.regex) {
          replace_all(s, step.text, step.content);
        } else {
          matches.clear();
          step.regex->find_all(s, matches);
          std::string out;
          std::size_t pos = 0;
          for (auto [b, e] : matches) {
            out.append(s, pos, b - pos);
            out += step.content;
            pos = e;
          }
          out.append(s, pos, std::string::npos);
          s = std::move(out);
        }
        break;
      case NormalizerStep::Kind::kStrip: {
        std::size_t b = 0, e = s.size();
        if (step.strip_left)
          while (b < e && is_ascii_space(s[b])) ++b;
        if (step.strip_right)
          while (e > b && is_ascii_space(s[e - 1])) --e;
        s = s.substr(b, e - b);
        break;
      }
    }
  }
  return s;
}

// Splits each piece by the step's regex matches according to the HF split behavior.
void split_pieces(const PreTokenizerStep& step, std::vector<Piece>& pieces,
                  std::vector<std::pair<std::size_t, std::size_t>>& matches) {
  std::vector<Piece> out;
  out.reserve(pieces.size() * 4);
  for (const Piece& piece : pieces) {
    matches.clear();
    step.regex->find_all(piece.text, matches);
    // Segments covering the piece: (begin, end, is_match).
    struct Span {
      std::size_t b, e;
      bool match;
    };
    std::vector<Span> spans;
    std::size_t pos = 0;
    for (auto [b, e] : matches) {
      if (b > pos) spans.push_back({pos, b, step.invert});
      spans.push_back({b, e, !step.invert});
      pos = e;
    }
    if (pos < piece.text.size()) spans.push_back({pos, piece.text.size(), step.invert});
    auto emit = [&](std::size_t b, std::size_t e) {
      if (e > b) out.push_back({piece.text.substr(b, e - b), piece.at_text_start && b == 0});
    };
    switch (step.behavior) {
      case SplitBehavior::kIsolated:
        for (const Span& s : spans) emit(s.b, s.e);
        break;
      case SplitBehavior::kRemoved:
        for (const Span& s : spans)
          if (!s.match) emit(s.b, s.e);
        break;
      case SplitBehavior::kMergedWithPrevious: {
        std::size_t start = 0;
        for (const Span& s : spans)
          if (s.match) {
            emit(start, s.e);
            start = s.e;
          }
        emit(start, piece.text.size());
        break;
      }
      case SplitBehavior::kMergedWithNext: {
        std::size_t start = 0;
        for (const Span& s : spans)
          if (s.match) {
            emit(start, s.b);
            start = s.b;
          }
        emit(start, piece.text.size());
        break;
      }
      case SplitBehavior::kContiguous: {
        std::size_t i = 0;
        while (i < spans.size()) {
          std::size_t j = i + 1;
          if (spans[i].match)
            while (j < spans.size() && spans[j].match) ++j;
          emit(spans[i].b, spans[j - 1].e);
          i = j;
        }
        break;
      }
    }
  }
  pieces = std::move(out);
}

}  // namespace

void Tokenizer::Impl::bpe(std::string_view piece, std::vector<std::int32_t>& out) const {
  std::vector<std::int32_t> symbols;
  symbols.reserve(piece.size());
  if (byte_level) {
    if (ignore_merges) {
      auto it = byte_vocab.find(piece);
      if (it != byte_vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    for (char c : piece) symbols.push_back(byte_ids[static_cast<unsigned char>(c)]);
  } else {
    if (ignore_merges) {
      auto it = vocab.find(piece);
      if (it != vocab.end()) {
        out.push_back(it->second);
        return;
      }
    }
    bool last_unk = false;
    for (std::size_t i = 0; i < piece.size();) {
      std::size_t n = utf8_char_length(piece.data(), piece.size(), i);
      std::string_view ch = piece.substr(i, n);
      i += n;
      auto it = vocab.find(ch);
      if (it != vocab.end()) {
        symbols.push_back(it->second);
        last_unk = false;
        continue;
      }
      if (byte_fallback && std::all_of(ch.begin(), ch.end(),
                                       [&](char b) { return byte_fallback_ids[static_cast<unsigned char>(b)] >= 0; })) {
        for (char b : ch) symbols.push_back(byte_fallback_ids[static_cast<unsigned char>(b)]);
        last_unk = false;
        continue;
      }
      if (unk_id) {
        if (!(fuse_unk && last_unk)) symbols.push_back(*unk_id);
        last_unk = true;
      }
    }
  }
  auto rule_of = [&](std::int32_t a, std::int32_t b) -> const MergeRule* {
    auto it = merges.find((static_cast<std::uint64_t>(a) << 32) | static_cast<std::uint32_t>(b));
    return it == merges.end() ? nullptr : &it->second;
  };
  constexpr std::int32_t kNone = INT_MAX;
  const std::size_t n = symbols.size();
  if (n <= 256) {
    // Short words: keep each adjacent pair's rank and rescan for the minimum (cheap, no heap).
    std::vector<std::int32_t> ranks(n > 0 ? n - 1 : 0);
    for (std::size_t i = 0; i + 1 < n; ++i) {
      const MergeRule* r = rule_of(symbols[i], symbols[i + 1]);
      ranks[i] = r ? r->rank : kNone;
    }
    while (symbols.size() > 1) {
      auto best = std::min_element(ranks.begin(), ranks.end());
      if (*best == kNone) break;
      std::size_t i = static_cast<std::size_t>(best - ranks.begin());
      symbols[i] = rule_of(symbols[i], symbols[i + 1])->merged_id;
      symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      ranks.erase(ranks.begin() + static_cast<std::ptrdiff_t>(i));
      if (i > 0) {
        const MergeRule* r = rule_of(symbols[i - 1], symbols[i]);
        ranks[i - 1] = r ? r->rank : kNone;
      }
      if (i + 1 < symbols.size()) {
        const MergeRule* r = rule_of(symbols[i], symbols[i + 1]);
        ranks[i] = r ? r->rank : kNone;
      }
    }
    out.insert(out.end(), symbols.begin(), symbols.end());
    return;
  }
  // Long words: linked list + min-heap of (rank, position), stale entries skipped on pop.
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (std::size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int>(i + 1) : -1;
  }
  using Entry = std::pair<std::int32_t, int>;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  auto push = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    if (const MergeRule* r = rule_of(symbols[left], symbols[next[left]])) heap.push({r->rank, left});
  };
  for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<int>(i));
  while (!heap.empty()) {
    auto [rank, left] = heap.top();
    heap.pop();
    if (!alive[left] || next[left] < 0) continue;
    int right = next[left];
    const MergeRule* r = rule_of(symbols[left], symbols[right]);
    if (!r || r->rank != rank) continue;
    symbols[left] = r->merged_id;
    alive[right] = false;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    push(prev[left]);
    push(left);
  }
  for (int i = 0; i >= 0; i = next[i]) out.push_back(symbols[i]);
}

void Tokenizer::Impl::encode_piece(std::string_view piece, std::vector<std::int32_t>& out) const {
  if (piece.empty()) return;
  if (piece.size() > PreTokenCache::kMaxKeyBytes) {
    bpe(piece, out);
    return;
  }
  std::size_t hash = StringHash{}(piece);
  if (cache.lookup(piece, hash, out)) return;
  std::size_t before = out.size();
  bpe(piece, out);
  cache.insert(piece, hash, out.data() + before, out.size() - before);
}

void Tokenizer::Impl::encode_segment(std::string_view segment, bool at_text_start,
                                     std::vector<std::int32_t>& out) const {
  if (segment.empty()) return;
  std::string normalized;
  if (!normalizer.empty()) {
    normalized = normalize(normalizer, segment);
    segment = normalized;
    if (segment.empty()) return;
  }
  std::vector<Piece> pieces{{segment, at_text_start}};
  std::deque<std::string> storage;  // owns the text of pieces that steps rewrite
  std::vector<std::pair<std::size_t, std::size_t>> matches;
  for (const PreTokenizerStep& step : pre_tokenizer) {
    switch (step.kind) {
      case PreTokenizerStep::Kind::kSplit: split_pieces(step, pieces, matches); break;
      case PreTokenizerStep::Kind::kMetaspace: {
        std::vector<Piece> out;
        for (const Piece& piece : pieces) {
          std::string s(piece.text);
          replace_all(s, " ", step.replacement);
          bool starts = s.compare(0, step.replacement.size(), step.replacement) == 0;
          if (!starts && (step.prepend_scheme == PreTokenizerStep::Prepend::kAlways ||
                          (step.prepend_scheme == PreTokenizerStep::Prepend::kFirst && piece.at_text_start)))
            s.insert(0, step.replacement);
          std::string_view v = storage.emplace_back(std::move(s));
          if (!step.split) {
            out.push_back({v, piece.at_text_start});
            continue;
          }
          // MergedWithNext on each replacement character.
          std::size_t start = 0;
          for (std::size_t hit = v.find(step.replacement, 1); hit != std::string_view::npos;
               hit = v.find(step.replacement, hit + step.replacement.size())) {
            out.push_back({v.substr(start, hit - start), piece.at_text_start && start == 0});
            start = hit;
          }
          out.push_back({v.substr(start), piece.at_text_start && start == 0});
        }
        pieces = std::move(out);
        break;
      }
      case PreTokenizerStep::Kind::kByteLevel:
        if (step.add_prefix_space)
          for (Piece& piece : pieces)
            if (piece.text.empty() || piece.text[0] != ' ') {
              std::string& prefixed = storage.emplace_back(1, ' ');
              prefixed.append(piece.text);
              piece.text = prefixed;
            }
        if (step.regex) {
          PreTokenizerStep isolated = step;
          isolated.behavior = SplitBehavior::kIsolated;
          isolated.invert = false;
          split_pieces(isolated, pieces, matches);
        }
        break;
    }
  }
  for (const Piece& piece : pieces) encode_piece(piece.text, out);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

namespace {

// bos_token/eos_token: a string, {"content": ...} (AddedToken's layout), or null.
std::optional<std::string> config_token(const JsonField& config, const char* key) {
  std::optional<JsonField> token = config.optional(key);
  if (!token) return std::nullopt;
  if (token->is_string()) return token->as_string();
  if (token->is_object()) return token->at("content").as_string();
  token->refuse("a string, {\"content\": ...} or null");
}

}  // namespace

Tokenizer Tokenizer::load(const fs::path& path_or_dir) {
  fs::path path = path_or_dir;
  std::error_code ec;
  if (fs::is_directory(path, ec)) path /= "tokenizer.json";
  if (!fs::exists(path, ec))
    fail_expected(path.string(), "no such file", "a tokenizer.json file or a directory holding one");
  auto impl = Impl::from_json_text(read_text_file(path), path.string());

  auto find = [&](const std::string& token) -> std::optional<std::int32_t> {
    auto it = impl->vocab.find(token);
    if (it == impl->vocab.end()) return std::nullopt;
    return it->second;
  };
  // bos/eos: tokenizer_config.json beside the file when present, else the post-processor's
  // first added token (bos), else the usual names of these models.
  fs::path config_path = path.parent_path() / "tokenizer_config.json";
  if (fs::exists(config_path, ec)) {
    const nlohmann::json document =
        parse_untrusted_json(read_text_file(config_path), config_path.string(), "a tokenizer_config.json");
    const JsonField config(document, config_path.string());
    if (!config.is_object()) config.refuse("a JSON object");
    if (auto t = config_token(config, "bos_token")) impl->bos = find(*t);
    if (auto t = config_token(config, "eos_token")) impl->eos = find(*t);
  }
  if (!impl->bos && !impl->prefix_ids.empty()) impl->bos = impl->prefix_ids.front();
  if (!impl->eos && !impl->suffix_ids.empty()) impl->eos = impl->suffix_ids.back();
  for (const char* name : {"<|begin_of_text|>", "<s>", "<|endoftext|>"})
    if (!impl->bos) impl->bos = find(name);
  for (const char* name : {"<|end_of_text|>", "</s>", "<|endoftext|>"})
    if (!impl->eos) impl->eos = find(name);
  return Tokenizer(std::move(impl));
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (add_special_tokens) out.insert(out.end(), m.prefix_ids.begin(), m.prefix_ids.end());
  std::size_t segment_start = 0, pos = 0;
  const std::size_t n = text.size();
  while (pos < n) {
    if (!m.added_first_byte[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    const AddedToken* hit = nullptr;
    for (const AddedToken& a : m.added) {  // longest first: leftmost-longest like HF
      if (a.content[0] != text[pos] || text.compare(pos, a.content.size(), a.content) != 0) continue;
      if (a.single_word) {
        std::size_t end = pos + a.content.size();
        if ((pos > 0 && is_word_byte(static_cast<unsigned char>(text[pos - 1]))) ||
            (end < n && is_word_byte(static_cast<unsigned char>(text[end]))))
          continue;
      }
      hit = &a;
      break;
    }
    if (!hit) {
      ++pos;
      continue;
    }
    std::size_t begin = pos, end = pos + hit->content.size();
    if (hit->lstrip)
      while (begin > segment_start && is_ascii_space(text[begin - 1])) --begin;
    if (hit->rstrip)
      while (end < n && is_ascii_space(text[end])) ++end;
    m.encode_segment(text.substr(segment_start, begin - segment_start), segment_start == 0, out);
    out.push_back(hit->id);
    pos = segment_start = end;
  }
  m.encode_segment(text.substr(segment_start), segment_start == 0, out);
  if (add_special_tokens) out.insert(out.end(), m.suffix_ids.begin(), m.suffix_ids.end());
  return out;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
  const Impl& m = *impl_;
  const auto size = static_cast<std::int64_t>(m.id_to_token.size());
  for (std::int32_t id : ids)
    if (id < 0 || id >= size) fail_expected("token id", str(id, " is out of range"), str("0 to ", size - 1));
  auto skipped = [&](std::int32_t id) { return skip_special_tokens && m.is_special[id]; };
  if (!m.id_bytes.empty()) {
    std::string out;
    for (std::int32_t id : ids)
      if (!skipped(id)) out += m.id_bytes[id];
    return out;
  }
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (std::int32_t id : ids)
    if (!skipped(id) && !m.id_to_token[id].empty()) tokens.push_back(m.id_to_token[id]);
  if (!m.has_decoder) {
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
    return out;
  }
  for (const DecoderStep& step : m.decoder) {
    switch (step.kind) {
      case DecoderStep::Kind::kByteLevel:
        for (std::string& t : tokens) t = tokenizer_byte_level_bytes(t);
        break;
      case DecoderStep::Kind::kReplace:
        for (std::string& t : tokens) replace_all(t, step.pattern, step.content);
        break;
      case DecoderStep::Kind::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        bool have_pending = false;
        for (std::string& t : tokens) {
          bool is_byte = t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
                         std::isxdigit(static_cast<unsigned char>(t[3])) &&
                         std::isxdigit(static_cast<unsigned char>(t[4]));
          if (is_byte) {
            pending += static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16));
            have_pending = true;
            continue;
          }
          if (have_pending) out.push_back(std::move(pending)), pending.clear(), have_pending = false;
          out.push_back(std::move(t));
        }
        if (have_pending) out.push_back(std::move(pending));
        tokens = std::move(out);
        break;
      }
      case DecoderStep::Kind::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecoderStep::Kind::kStrip:
        for (std::string& t : tokens) {
          std::size_t b = 0, e = t.size();
          for (int k = 0; k < step.start && b < e && t.compare(b, step.content.size(), step.content) == 0; ++k)
            b += step.content.size();
          for (int k = 0; k < step.stop && e >= b + step.content.size() &&
                          t.compare(e - step.content.size(), step.content.size(), step.content) == 0;
               ++k)
            e -= step.content.size();
          t = t.substr(b, e - b);
        }
        break;
      case DecoderStep::Kind::kMetaspace:
        // As HF: in the first token every replacement char is dropped (not only a leading one).
        for (std::size_t i = 0; i < tokens.size(); ++i)
          replace_all(tokens[i], step.content, i == 0 && step.prepend ? "" : " ");
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

std::int64_t Tokenizer::vocab_size() const { return static_cast<std::int64_t>(impl_->id_to_token.size()); }
std::optional<std::int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<std::int32_t> Tokenizer::eos_id() const { return impl_->eos; }

std::optional<std::int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->vocab.find(token);
  if (it == impl_->vocab.end()) return std::nullopt;
  return it->second;
}

}  // namespace minitron
