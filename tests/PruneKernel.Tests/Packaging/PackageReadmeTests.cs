using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace PruneKernel.Tests.Packaging;

/// <summary>
/// Each package carries its own README, shown on its NuGet page where relative links lead nowhere: every link in it
/// must be absolute and point into the repository named by RepositoryUrl (Directory.Build.props), at a file that exists.
/// </summary>
public sealed partial class PackageReadmeTests
{
    public static TheoryData<string> PackableProjects => new(["PruneKernel", "PruneKernel.Extensions.AI", "PruneKernel.SemanticKernel"]);

    [Theory]
    [MemberData(nameof(PackableProjects))]
    public void ReadmeLinksAreAbsoluteAndResolve(string project)
    {
        var root = Path.GetFullPath(Path.Combine(Fixtures.Root, "..", ".."));
        var repositoryUrl = XDocument.Load(Path.Combine(root, "Directory.Build.props")).Descendants("RepositoryUrl").Single().Value;
        var csproj = XDocument.Load(Path.Combine(root, "src", project, project + ".csproj"));
        Assert.Equal("true", csproj.Descendants("IsPackable").Single().Value);
        var readme = File.ReadAllText(Path.Combine(root, "src", project, "README.md"));

        var links = Link().Matches(readme).Select(m => m.Groups["target"].Value).ToList();
        Assert.NotEmpty(links);
        var blob = repositoryUrl + "/blob/main/";
        foreach (var link in links)
        {
            Assert.True(link.StartsWith(blob, StringComparison.Ordinal), $"{project}/README.md: '{link}' is not under {blob}");
            var file = link[blob.Length..].Split('#')[0];
            Assert.True(File.Exists(Path.Combine(root, file)), $"{project}/README.md: '{link}' names no file of the repository");
        }
    }

    [GeneratedRegex(@"\]\((?<target>[^)\s]+)\)")]
    private static partial Regex Link();
}
