// Report writers of the reproduction: markdown tables, SVG line charts written
// directly (no plotting dependency), and the rows that results/summary.json
// holds for every method of every table.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace paper {

inline std::string fmt(double v, int prec = 2) {
  if (std::isnan(v)) return "-";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

inline std::string fmt_bytes(double b) {
  char s[64];
  if (b >= 1e6) std::snprintf(s, sizeof s, "%.2f MB", b / 1e6);
  else std::snprintf(s, sizeof s, "%.1f kB", b / 1e3);
  return s;
}

// One row of a results table: a method's accuracy (%) per task, its
// normalized score (accuracy / the task's expert accuracy x 100) and storage.
struct MethodRow {
  std::string name;
  std::vector<double> accuracy;    // per task, %
  std::vector<double> normalized;  // per task
  double storage_bytes = NAN;
  std::string note;

  double avg_accuracy() const { return mean(accuracy); }
  double avg_normalized() const { return mean(normalized); }
  static double mean(const std::vector<double>& v) {
    if (v.empty()) return NAN;
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  }

  nlohmann::json to_json(const std::vector<std::string>& tasks) const {
    nlohmann::json per = nlohmann::json::object();
    for (std::size_t t = 0; t < tasks.size() && t < accuracy.size(); ++t)
      per[tasks[t]] = {{"accuracy", accuracy[t]}, {"normalized", normalized[t]}};
    nlohmann::json j = {
        {"method", name}, {"per_task", per}, {"avg_accuracy", avg_accuracy()}, {"avg_normalized", avg_normalized()}};
    j["storage_bytes"] = std::isnan(storage_bytes) ? nlohmann::json(nullptr) : nlohmann::json(storage_bytes);
    if (!note.empty()) j["note"] = note;
    return j;
  }
};

inline nlohmann::json rows_json(const std::vector<MethodRow>& rows, const std::vector<std::string>& tasks) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& r : rows) a.push_back(r.to_json(tasks));
  return a;
}

// A claim of the paper next to what an analog measured, and whether it holds.
struct Claim {
  std::string paper, ours;
  bool holds;
};

inline nlohmann::json claims_json(const std::vector<Claim>& claims) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& c : claims) a.push_back({{"paper", c.paper}, {"ours", c.ours}, {"reproduced", c.holds}});
  return a;
}

// Table 4's claim: `rows` alternate a static merge and Twin-Merging built on it.
inline Claim table4_claim(const std::vector<MethodRow>& rows) {
  bool all_improve = true;
  for (std::size_t i = 0; i + 1 < rows.size(); i += 2)
    all_improve = all_improve && rows[i + 1].avg_normalized() > rows[i].avg_normalized();
  return {"Twin-Merging improves whichever merger builds the shared model (Table 4)",
          std::string(all_improve ? "improves" : "does not improve") + " all " + std::to_string(rows.size() / 2) +
              " mergers",
          all_improve};
}

// The tables both reproductions put in summary.json, under the same keys.
inline void put_tables(nlohmann::json& summary, const std::vector<std::string>& tasks,
                       const std::vector<std::string>& held, const std::vector<MethodRow>& table2,
                       const std::vector<MethodRow>& table4, const std::vector<MethodRow>& table5_own_heads,
                       const std::vector<MethodRow>& table5_pretrained_heads) {
  summary["table2"] = rows_json(table2, tasks);
  summary["table4"] = rows_json(table4, tasks);
  summary["table5"] = rows_json(table5_own_heads, held);
  summary["table5_pretrained_heads"] = rows_json(table5_pretrained_heads, held);
}

// Table 5's claim under one protocol. `rows`: the own expert, the pretrained
// body, `n_static` static merges, Twin-Merging (SVD), Twin-Merging (sparsified).
// Judged on the SVD variant (the headline one); the sparsified one is shown.
inline Claim held_out_claim(const std::vector<MethodRow>& rows, std::size_t n_static, const std::string& protocol) {
  const double tw = rows[2 + n_static].avg_normalized();
  double best = 0;
  for (std::size_t i = 2; i < 2 + n_static; ++i) best = std::max(best, rows[i].avg_normalized());
  return {"On unseen tasks Twin-Merging generalizes at least as well as static merging (Table 5), " + protocol,
          "held-out avg: Twin-Merging " + fmt(tw) + " (sparsified " + fmt(rows[3 + n_static].avg_normalized()) +
              ") vs best static " + fmt(best) + ", pretrained " + fmt(rows[1].avg_normalized()),
          tw >= best};
}

// "blurred → plain 0.26 rot180 0.24; ...": the two merged tasks each held-out
// task's inputs are routed to most (mean weight), from {held: {task: w}}.
inline std::string routing_markdown(const nlohmann::json& routing, const std::vector<std::string>& held) {
  std::ostringstream md;
  for (std::size_t h = 0; h < held.size(); ++h) {
    std::vector<std::pair<double, std::string>> top;
    for (auto& [k, v] : routing.at(held[h]).items()) top.emplace_back(v.get<double>(), k);
    std::sort(top.rbegin(), top.rend());
    md << " " << held[h] << " →";
    for (std::size_t j = 0; j < std::min<std::size_t>(2, top.size()); ++j)
      md << " " << top[j].second << " " << fmt(top[j].first, 2);
    md << (h + 1 < held.size() ? ";" : ".");
  }
  return md.str();
}

// Markdown: normalized score per task (accuracy in parentheses), averages,
// storage in bytes and relative to the individual experts.
inline std::string markdown_table(const std::vector<std::string>& tasks, const std::vector<MethodRow>& rows,
                                  double reference_bytes) {
  std::ostringstream s;
  s << "| Method |";
  for (const auto& t : tasks) s << " " << t << " |";
  s << " **Avg. normalized** | Avg. accuracy | Storage | vs experts |\n|---|";
  for (std::size_t i = 0; i < tasks.size(); ++i) s << "---:|";
  s << "---:|---:|---:|---:|\n";
  for (const MethodRow& r : rows) {
    s << "| " << r.name << " |";
    for (std::size_t t = 0; t < tasks.size(); ++t)
      s << " " << fmt(r.normalized[t], 1) << " (" << fmt(r.accuracy[t], 1) << ") |";
    s << " **" << fmt(r.avg_normalized()) << "** | " << fmt(r.avg_accuracy()) << " | "
      << (std::isnan(r.storage_bytes) ? std::string("-") : fmt_bytes(r.storage_bytes)) << " | "
      << (std::isnan(r.storage_bytes) || reference_bytes <= 0 ? std::string("-")
                                                              : fmt(r.storage_bytes / reference_bytes, 3) + "x")
      << " |\n";
  }
  return s.str();
}

// --- SVG line charts -----------------------------------------------------------

struct Series {
  std::string label;
  std::vector<double> x, y;
  bool right_axis = false;  // plotted against the right-hand axis (e.g. storage)
};

struct Chart {
  std::string title, xlabel, ylabel, y2label;
  bool log_x = false;
  std::vector<Series> series;
};

inline std::string svg_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '&') o += "&amp;";
    else if (c == '<') o += "&lt;";
    else if (c == '>') o += "&gt;";
    else o += c;
  }
  return o;
}

inline std::string render_svg(const Chart& c) {
  const double W = 720, H = 440, L = 70, R = c.y2label.empty() ? 30 : 80, Tp = 40, B = 60;
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  auto tx = [&](double x) { return c.log_x ? std::log2(x) : x; };
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY, z0 = INFINITY, z1 = -INFINITY;
  for (const Series& s : c.series)
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (std::isnan(s.y[i])) continue;
      x0 = std::min(x0, tx(s.x[i])), x1 = std::max(x1, tx(s.x[i]));
      if (s.right_axis) z0 = std::min(z0, s.y[i]), z1 = std::max(z1, s.y[i]);
      else y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
    }
  if (!(x1 > x0)) x1 = x0 + 1;
  auto pad = [](double& lo, double& hi) {
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (!(hi > lo)) hi = lo + 1;
    const double p = 0.05 * (hi - lo);
    lo -= p, hi += p;
  };
  pad(y0, y1);
  pad(z0, z1);
  auto px = [&](double x) { return L + (tx(x) - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y, bool right) {
    const double lo = right ? z0 : y0, hi = right ? z1 : y1;
    return H - B - (y - lo) / (hi - lo) * (H - Tp - B);
  };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << svg_escape(c.title)
    << "</text>\n";
  s << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B
    << "\" stroke=\"black\"/>\n";
  s << "<line x1=\"" << L << "\" y1=\"" << Tp << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  for (int k = 0; k <= 5; ++k) {
    const double yv = y0 + (y1 - y0) * k / 5.0, yp = py(yv, false);
    s << "<line x1=\"" << L - 4 << "\" y1=\"" << yp << "\" x2=\"" << W - R << "\" y2=\"" << yp
      << "\" stroke=\"#ddd\"/><text x=\"" << L - 6 << "\" y=\"" << yp + 4 << "\" text-anchor=\"end\">" << fmt(yv, 1)
      << "</text>\n";
    if (!c.y2label.empty()) {
      const double zv = z0 + (z1 - z0) * k / 5.0;
      s << "<text x=\"" << W - R + 6 << "\" y=\"" << py(zv, true) + 4 << "\">" << fmt(zv, zv < 10 ? 2 : 0)
        << "</text>\n";
    }
  }
  // x ticks at the data points of the first series
  if (!c.series.empty())
    for (double xv : c.series.front().x) {
      const double xp = px(xv);
      s << "<line x1=\"" << xp << "\" y1=\"" << H - B << "\" x2=\"" << xp << "\" y2=\"" << H - B + 4
        << "\" stroke=\"black\"/><text x=\"" << xp << "\" y=\"" << H - B + 18 << "\" text-anchor=\"middle\">"
        << fmt(xv, xv == std::floor(xv) ? 0 : 2) << "</text>\n";
    }
  s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 18 << "\" text-anchor=\"middle\">" << svg_escape(c.xlabel)
    << "</text>\n";
  s << "<text transform=\"translate(18," << (Tp + H - B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
    << svg_escape(c.ylabel) << "</text>\n";
  if (!c.y2label.empty())
    s << "<text transform=\"translate(" << W - 12 << "," << (Tp + H - B) / 2 << ") rotate(90)\" text-anchor=\"middle\">"
      << svg_escape(c.y2label) << "</text>\n";
  for (std::size_t k = 0; k < c.series.size(); ++k) {
    const Series& sr = c.series[k];
    const char* col = colors[k % 8];
    s << "<polyline fill=\"none\" stroke=\"" << col << "\" stroke-width=\"2\""
      << (sr.right_axis ? " stroke-dasharray=\"6,4\"" : "") << " points=\"";
    for (std::size_t i = 0; i < sr.x.size(); ++i)
      if (!std::isnan(sr.y[i])) s << px(sr.x[i]) << "," << py(sr.y[i], sr.right_axis) << " ";
    s << "\"/>\n";
    for (std::size_t i = 0; i < sr.x.size(); ++i)
      if (!std::isnan(sr.y[i]))
        s << "<circle cx=\"" << px(sr.x[i]) << "\" cy=\"" << py(sr.y[i], sr.right_axis) << "\" r=\"3\" fill=\"" << col
          << "\"/>\n";
    const double ly = Tp + 8 + 16.0 * static_cast<double>(k);
    s << "<line x1=\"" << L + 10 << "\" y1=\"" << ly << "\" x2=\"" << L + 34 << "\" y2=\"" << ly << "\" stroke=\""
      << col << "\" stroke-width=\"2\"" << (sr.right_axis ? " stroke-dasharray=\"6,4\"" : "") << "/><text x=\""
      << L + 40 << "\" y=\"" << ly + 4 << "\">" << svg_escape(sr.label) << "</text>\n";
  }
  s << "</svg>\n";
  return s.str();
}

}  // namespace paper
