using System.Globalization;
using System.Net;
using System.Text;
using PruneKernel.Evaluation.Evaluator;

namespace PruneKernel.Evaluation.Reports;

/// <summary>Fig. 18: one row's prompt with every text token coloured by how deep it survived pruning.</summary>
internal static class CaseStudyHtml
{
    public static void Write(string path, CaseStudyData data)
    {
        // Depth reached: the number of pruning layers after which a token was still kept (all of them: never dropped).
        var depth = new int[data.Tokens.Count];
        for (var l = 0; l < data.KeptIndices.Count; l++)
        {
            foreach (var i in data.KeptIndices[l])
            {
                if (i < depth.Length && depth[i] == l)
                {
                    depth[i] = l + 1;
                }
            }
        }

        var m = data.KeptIndices.Count;
        var html = new StringBuilder();
        html.Append("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Case study ").Append(WebUtility.HtmlEncode(data.RowId))
            .Append("</title><style>body{font-family:sans-serif;max-width:70em;margin:2em auto;line-height:1.6}")
            .Append(".t{white-space:pre-wrap;border-radius:2px}.v{background:#9cf;font-weight:bold}")
            .Append("table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>");
        html.Append("<h1>Case study: row ").Append(WebUtility.HtmlEncode(data.RowId)).Append("</h1>");
        html.Append("<p>Expected answer <b>").Append(WebUtility.HtmlEncode(data.Answer)).Append("</b>; reply under pruning <b>")
            .Append(WebUtility.HtmlEncode(data.Reply)).Append("</b>.</p>");
        html.Append("<p>Each text token is shaded by the pruning layer after which it was dropped: <span class=\"t\" style=\"background:")
            .Append(Colour(0, m)).Append("\">dropped after the first pruning layer</span> … <span class=\"t\" style=\"background:")
            .Append(Colour(m - 1, m)).Append("\">dropped after the last</span>; unshaded tokens reach every layer; ")
            .Append("<span class=\"t v\">[image × N]</span> marks the visual tokens (never pruned).</p>");
        html.Append("<table><tr><th>pruning layer</th><th>decoder layer</th><th>tokens kept</th></tr>");
        for (var l = 0; l < m; l++)
        {
            html.Append(CultureInfo.InvariantCulture, $"<tr><td>{l + 1}</td><td>{data.Layers[l]}</td><td>{data.KeptIndices[l].Count}</td></tr>");
        }

        html.Append("</table><hr><div>");
        for (var i = 0; i < data.Tokens.Count; i++)
        {
            if (data.Visual[i])
            {
                var run = 0;
                while (i + run < data.Tokens.Count && data.Visual[i + run])
                {
                    run++;
                }

                html.Append(CultureInfo.InvariantCulture, $"<span class=\"t v\">[image × {run}]</span>");
                i += run - 1;
                continue;
            }

            var text = WebUtility.HtmlEncode(data.Tokens[i]);
            if (depth[i] >= m)
            {
                html.Append("<span class=\"t\">").Append(text).Append("</span>");
            }
            else
            {
                html.Append(CultureInfo.InvariantCulture, $"<span class=\"t\" title=\"dropped after pruning layer {depth[i] + 1} (decoder layer {data.Layers[depth[i]]})\" style=\"background:{Colour(depth[i], m)}\">")
                    .Append(text).Append("</span>");
            }
        }

        html.Append("</div></body></html>\n");
        File.WriteAllText(path, html.ToString(), new UTF8Encoding(false));
    }

    /// <summary>Dark red for tokens dropped first, fading to pale yellow for those dropped last.</summary>
    private static string Colour(int step, int steps)
    {
        var t = steps <= 1 ? 0 : step / (double)(steps - 1);
        int r = 230 + (int)(25 * t), g = 90 + (int)(150 * t), b = 90 + (int)(90 * t);
        return string.Create(CultureInfo.InvariantCulture, $"rgb({r},{g},{b})");
    }
}
