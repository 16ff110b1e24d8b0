using System.Text.Json;
using PruneKernel.Text;

namespace PruneKernel.Tests.Text;

/// <summary>The LLaVA-1.5 template against transformers' rendering of the same Jinja template.</summary>
public sealed class ChatTemplateTests
{
    [Fact]
    public void RendersEveryGoldenConversation()
    {
        using var document = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("chat", "templates.json")));
        var cases = document.RootElement.GetProperty("cases").EnumerateArray().ToList();
        Assert.True(cases.Count >= 10);
        foreach (var c in cases)
        {
            var messages = c.GetProperty("messages").EnumerateArray().Select(m => new PromptMessage(
                Enum.Parse<PromptRole>(m.GetProperty("role").GetString()!, ignoreCase: true),
                m.GetProperty("content").EnumerateArray().Select(part => part.GetProperty("type").GetString() == "image"
                    ? (PromptPart)new ImagePart()
                    : new TextPart(part.GetProperty("text").GetString()!)).ToList())).ToList();
            var rendered = Llava15ChatTemplate.Instance.Render(messages, c.GetProperty("add_generation_prompt").GetBoolean());
            Assert.Equal(c.GetProperty("text").GetString(), rendered);
        }
    }

    [Fact]
    public void FixtureFoldersUseTheLlavaTemplate() =>
        Assert.Same(Llava15ChatTemplate.Instance, ChatTemplates.ForModel(Fixtures.Model("llava-tiny-f32")));

    [Fact]
    public void ForeignTemplateIsRefused()
    {
        var folder = Directory.CreateTempSubdirectory("pk-tpl-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(folder, "chat_template.jinja"), "{% for m in messages %}<|im_start|>{{ m['role'] }}{% endfor %}");
            Assert.Throws<TokenizerException>(() => ChatTemplates.ForModel(folder));
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }

    [Fact]
    public void UserFactoryPutsImagesFirst()
    {
        var message = PromptMessage.User("What?", 2);
        Assert.Equal(2, message.ImageCount);
        Assert.Equal("USER: <image>\n<image>\nWhat? ASSISTANT:", Llava15ChatTemplate.Instance.Render([message], true));
    }
}
